//! The database URL's secrets, kept out of everything jobsd prints: a URL can carry its password
//! in the user info or in query parameters, written in any case, percent-encoded, or in a form
//! the URL parser refuses, and libraries echo parameters in their own messages. So the secrets
//! are found once, in every spelling, and replaced wherever they would appear.

use std::ops::Range;

/// What stands in for a secret in anything jobsd prints.
pub(super) const HIDDEN: &str = "***";

/// Words in a query parameter's name (compared in lower case, percent-decoded) that make its
/// value a secret: `password`, `sslpassword`, `PASSWORD`, `db_passwd`, `client_secret`, ….
pub(super) const SECRET_WORDS: &[&str] = &["password", "passwd", "pwd", "secret", "token"];

/// The URL with every secret in it replaced by `***`, for log lines and error messages: the
/// password of the user info, and the value of every query parameter whose name says it is a
/// secret. A URL the `url` crate cannot parse is still shown, with what follows the `:` of
/// anything that looks like user info hidden, and the values of such parameters.
pub fn redact(url: &str) -> String {
    let (text, secrets) = secret_ranges(url);
    if secrets.is_empty() {
        return url.to_owned();
    }
    let mut shown = String::with_capacity(text.len());
    let mut from = 0;
    for range in secrets {
        shown.push_str(&text[from..range.start]);
        shown.push_str(HIDDEN);
        from = range.end;
    }
    shown.push_str(&text[from..]);
    shown
}

/// Every spelling of the URL's secrets that a message could carry: as the URL spells them,
/// percent-decoded as drivers use them, and escaped as Rust's `{:?}` and JSON write strings
/// (log fields). Longest first, so that [`scrub`] replaces a secret before
/// any part of it.
pub fn secrets(url: &str) -> Vec<String> {
    let (text, ranges) = secret_ranges(url);
    let mut spellings: Vec<String> = Vec::new();
    for range in ranges {
        // A value after `?` may spell a space as `+`; the user info may not.
        let in_query = text[..range.start].contains('?');
        let raw = text[range].to_owned();
        let plus = if in_query {
            raw.replace('+', " ")
        } else {
            raw.clone()
        };
        let decoded = percent_encoding::percent_decode_str(&plus)
            .decode_utf8_lossy()
            .into_owned();
        for secret in [raw, decoded] {
            let json = serde_json::Value::from(secret.as_str()).to_string();
            let debug = format!("{secret:?}");
            spellings.push(json[1..json.len() - 1].to_owned());
            spellings.push(debug[1..debug.len() - 1].to_owned());
            spellings.push(secret);
        }
    }
    spellings.retain(|secret| !secret.is_empty() && secret != HIDDEN);
    spellings.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    spellings.dedup();
    spellings
}

/// `text` with every spelling of `url`'s secrets replaced by `***`: for messages that came
/// from parsing `url` or connecting with it, which drivers may fill with parts of it.
pub fn scrub(text: &str, url: &str) -> String {
    scrub_all(text, &secrets(url))
}

/// `text` with each of `secrets` (as [`secrets`] lists them) replaced by `***`.
pub fn scrub_all(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), HIDDEN);
        }
    }
    text
}

/// The text `redact` starts from and the byte ranges of it to hide, in order, not overlapping:
/// the `url` crate's spelling of the URL when it parses, else the URL as written.
pub(super) fn secret_ranges(url: &str) -> (String, Vec<Range<usize>>) {
    let Ok(parsed) = url::Url::parse(url) else {
        return (url.to_owned(), fallback_ranges(url));
    };
    // An `@` that did not end the user info: most likely a password with a `/`, `?` or `#` in
    // it, which ended the authority early, so the rest of it is now path, query or fragment.
    let user_info = !parsed.username().is_empty() || parsed.password().is_some();
    if url.matches('@').count() > usize::from(user_info) {
        return (url.to_owned(), fallback_ranges(url));
    }
    let text = parsed.as_str();
    let mut ranges = Vec::new();
    // The `url` crate writes `scheme://user:password@…`, encoding any `:`, `@` or `?` inside.
    if let Some(password) = parsed.password() {
        let start = parsed.scheme().len() + "://".len() + parsed.username().len() + ":".len();
        let range = start..start + password.len();
        if text.get(range.clone()) == Some(password) {
            ranges.push(range);
        } else {
            return (text.to_owned(), fallback_ranges(text));
        }
    }
    if let Some(query) = parsed.query()
        && let Some(at) = text.find('?').map(|at| at + 1)
    {
        ranges.extend(
            secret_values(query)
                .into_iter()
                .map(|range| at + range.start..at + range.end),
        );
    }
    (parsed.as_str().to_owned(), merged(ranges))
}

/// For a URL the `url` crate cannot read, so its parts are guesses: a password may hold `/`,
/// `?` or `@`, which is often why it cannot be read. So the user info runs to the last `@`
/// and all of it after its first `:` is hidden, and every `name=value` pair with a secret name
/// anywhere in the URL has its value hidden. Hiding too much is the safe side.
pub(super) fn fallback_ranges(url: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let authority = match url.find("://") {
        Some(at) => at + 3,
        None => url.find(':').map_or(0, |at| at + 1),
    };
    if let Some(end) = url[authority..].rfind('@').map(|at| authority + at)
        && let Some(colon) = url[authority..end].find(':').map(|at| authority + at)
        && colon + 1 < end
    {
        ranges.push(colon + 1..end);
    }
    let query = url.find('?').map_or(authority, |at| at + 1);
    ranges.extend(
        secret_values(&url[query..])
            .into_iter()
            .map(|range| query + range.start..query + range.end),
    );
    merged(ranges)
}

/// The ranges of the values of `query`'s `name=value` pairs (split at `&`, `;` and `?`) whose
/// name holds one of [`SECRET_WORDS`]. A value runs to the next `&` or `#`.
pub(super) fn secret_values(query: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < query.len() {
        let end = query[start..]
            .find(['&', '#'])
            .map_or(query.len(), |at| start + at);
        let pair = &query[start..end];
        if let Some(equals) = pair.find('=') {
            let name = pair[..equals].rsplit([';', '?']).next().unwrap_or_default();
            if is_secret_name(name) && equals + 1 < pair.len() {
                ranges.push(start + equals + 1..end);
            }
        }
        start = end + 1;
    }
    ranges
}

pub(super) fn is_secret_name(name: &str) -> bool {
    let name = name.replace('+', " ");
    let name = percent_encoding::percent_decode_str(&name)
        .decode_utf8_lossy()
        .to_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// `ranges` sorted, with overlapping ones joined.
pub(super) fn merged(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|range| range.start);
    let mut joined: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match joined.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => joined.push(range),
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_of_the_user_info() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/jobs?sslmode=require"),
            "postgres://app:***@db:5432/jobs?sslmode=require"
        );
        assert_eq!(
            redact("mysql://root:s3cret@127.0.0.1:3306/jobs"),
            "mysql://root:***@127.0.0.1:3306/jobs"
        );
        // Percent-encoded: hidden whole, and known decoded too.
        assert_eq!(redact("postgres://u:p%40ss@h/db"), "postgres://u:***@h/db");
        assert!(secrets("postgres://u:p%40ss@h/db").contains(&"p@ss".to_owned()));
    }

    #[test]
    fn redact_hides_every_secret_query_parameter_in_any_case_and_spelling() {
        for (url, shown) in [
            (
                "postgres://u@h:1/db?password=S3CRET",
                "postgres://u@h:1/db?password=***",
            ),
            (
                "postgres://u@h/db?sslmode=require&sslpassword=S3CRET&application_name=a",
                "postgres://u@h/db?sslmode=require&sslpassword=***&application_name=a",
            ),
            (
                "postgres://u@h/db?PASSWORD=S3CRET",
                "postgres://u@h/db?PASSWORD=***",
            ),
            (
                "postgres://u@h/db?Password=S3CRET",
                "postgres://u@h/db?Password=***",
            ),
            (
                "mysql://u@h/db?db_passwd=S3CRET",
                "mysql://u@h/db?db_passwd=***",
            ),
            (
                "mysql://u@h/db?client_Secret=S3CRET",
                "mysql://u@h/db?client_Secret=***",
            ),
            (
                "postgres://u@h/db?pass%77ord=S3CRET",
                "postgres://u@h/db?pass%77ord=***",
            ),
            (
                "postgres://u@h/db?password=S3CRET#top",
                "postgres://u@h/db?password=***#top",
            ),
            (
                "postgres://u:S3CRET@h/db?password=S3CRET&sslpassword=S3CRET2",
                "postgres://u:***@h/db?password=***&sslpassword=***",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let spellings = secrets("postgres://u@h/db?password=a+b%21&x=1");
        assert!(spellings.contains(&"a b!".to_owned()), "{spellings:?}");
        assert!(spellings.contains(&"a+b%21".to_owned()), "{spellings:?}");
    }

    #[test]
    fn redact_leaves_urls_without_secrets_as_they_are() {
        for url in [
            "mysql://root@127.0.0.1/jobs",
            "sqlite://jobsd.db",
            "sqlite::memory:",
            "postgres://h/db?sslmode=require&application_name=jobsd",
            "postgres://u:@h/db",
        ] {
            assert_eq!(redact(url), url);
        }
        assert!(secrets("postgres://u@h/db?sslmode=require").is_empty());
    }

    #[test]
    fn redact_hides_secrets_of_urls_that_do_not_parse() {
        for (url, secret) in [
            ("postgres://a:b c@", "b c"),
            ("postgres://u:pa/ss@h/db", "pa/ss"),
            ("postgres://u:S3CRET@h:notaport/db", "S3CRET"),
            (
                "postgres://u@h:notaport/db?sslmode=x&PassWord=S3CRET",
                "S3CRET",
            ),
            ("postgres://u@[::1/db?password=S3CRET", "S3CRET"),
        ] {
            assert!(url::Url::parse(url).is_err(), "{url} parses after all");
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
            assert!(shown.contains(HIDDEN), "{shown}");
            assert!(secrets(url).contains(&secret.to_owned()), "{url}");
        }
        assert_eq!(
            redact("postgres://u:S3CRET@h:notaport/db"),
            "postgres://u:***@h:notaport/db"
        );
        // These parse, but not as meant: the password's `?`, `#` or `/` ended the authority.
        for (url, secret) in [
            ("postgres://u:p@ss?w#rd@h:5432/db", "p@ss?w#rd"),
            ("postgres://u:12/ss@h/db", "12/ss"),
            ("postgres://u:p@ss@h/db", "p@ss"),
        ] {
            assert!(url::Url::parse(url).is_ok(), "{url}");
            let shown = redact(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
            assert!(shown.starts_with("postgres://u:***@"), "{shown}");
        }
    }

    #[test]
    fn scrub_takes_every_spelling_of_the_secrets_out_of_a_message() {
        let url = "postgres://u:pa%22ss@h/db?sslpassword=S3%2FCRET";
        let message = concat!(
            r#"value=S3/CRET, "pa\"ss", {"v":"pa\"ss"}, pa"ss, "#,
            "S3%2FCRET, pa%22ss"
        );
        let clean = scrub(message, url);
        assert_eq!(clean, r#"value=***, "***", {"v":"***"}, ***, ***, ***"#);
        assert_eq!(scrub("nothing to hide", url), "nothing to hide");
    }
}
