//! `jobsd status --watch`: in a terminal, a running job's progress is a bar; anywhere else, the
//! same view as plain text.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::common::TestDb;
use crate::reliability::processes::Launcher;

crate::on_every_backend!(the_watch_view_draws_a_running_jobs_progress_as_a_bar);

const SETTINGS: &[(&str, &str)] = &[("JOBSD_POLL_INTERVAL", "100ms")];

/// Runs `jobsd status --watch` for `seconds`, in a pseudo-terminal (util-linux `script`) when
/// `terminal`, and returns what it wrote.
async fn watch(db: &TestDb, seconds: u64, terminal: bool) -> String {
    let folder = tempfile::tempdir().expect("temporary folder");
    let jobsd = env!("CARGO_BIN_EXE_jobsd");
    let mut command = if terminal {
        let mut script = tokio::process::Command::new("script");
        script.args(["-qfec", &format!("{jobsd} status --watch"), "/dev/null"]);
        script
    } else {
        let mut plain = tokio::process::Command::new(jobsd);
        plain.args(["status", "--watch"]);
        plain
    };
    command
        .current_dir(folder.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("TERM", "xterm-256color")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the watch view starts");
    let pid = child.id().expect("pid");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Ctrl-C, as a person ends it: typed into the terminal, whose line discipline signals the
    // view itself (a signal to `script` alone would leave it running on a terminal hung up, if
    // it inherited SIGHUP ignored); sent as SIGINT without one.
    if terminal {
        let mut keyboard = child.stdin.take().expect("the terminal's input");
        keyboard.write_all(b"\x03").await.expect("Ctrl-C typed");
        keyboard.flush().await.expect("Ctrl-C sent");
    } else {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
    }
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the view stops on SIGINT")
        .expect("output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn the_watch_view_draws_a_running_jobs_progress_as_a_bar(db: TestDb) {
    let launcher = Launcher::new(&db, SETTINGS);
    let mut replica = launcher.start("w");
    replica.ready(Duration::from_secs(30)).await;
    // A 6 s sleep checkpoints every second: its progress is slept of total.
    db.exec("INSERT INTO jobs (object_id, sleep) VALUES (1, 6000000000)")
        .await
        .expect("job");
    db.exec("INSERT INTO jobs (kind, object_id) VALUES ('no_such_kind', 2)")
        .await
        .expect("job of an unknown kind");
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let live = watch(&db, 3, true).await;
    assert!(
        live.contains("default sleep ["),
        "the running job's line:\n{live}"
    );
    assert!(live.contains('█'), "a bar drawn with blocks:\n{live}");
    assert!(live.contains("% "), "its percentage:\n{live}");
    assert!(live.contains("no_such_kind"), "the recent failure:\n{live}");
    assert!(live.contains("starts/s"), "the starts per second:\n{live}");

    let plain = watch(&db, 2, false).await;
    assert!(
        !plain.contains('\u{1b}'),
        "no escape codes when not a terminal:\n{plain}"
    );
    assert!(plain.contains("| default |"), "counts by queue:\n{plain}");
    assert!(plain.contains("recent failures:"), "{plain}");
    replica.stop(Duration::from_secs(30)).await;
}
