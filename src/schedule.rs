//! Recurring jobs: a schedule's cron read in its time zone, and the plan of one pass over it.
//!
//! The plan is pure: from what a replica read of a schedule's row (its cursor `last_run_at` and
//! `next_run_at`, and the database's time), it lists the steps that move the cursor, each to be
//! written as one conditional UPDATE that only one replica can win, with the job of its slot
//! inserted in the same transaction. Every replica computes the same plan from the same row, so
//! whichever wins a step, the slots it inserts are the same; a replica that loses a step stops
//! and reads the row again on its next pass. See ARCHITECTURE.md, "Recurring jobs".
//!
//! Daylight saving time is croner's: the cron is read as wall-clock time in the schedule's
//! time zone. A fixed time that does not exist on a day (02:30 on the night the clocks go
//! forward in Europe/Berlin) runs at the first instant after the gap (03:00 summer time); a
//! fixed time that happens twice (02:30 on the night they go back) runs once, at the first of
//! the two. Patterns with a wildcard or step in the hour or minute (`*/15 * * * *`) follow the
//! wall clock through the repeated hour, so they run on both passes of it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// The most slots one pass inserts for one schedule: a long outage with `catch_up = 'all'`
/// inserts its missed slots over several passes, never all in one.
pub const BATCH: usize = 100;

/// What a schedule does about slots that came due while no replica ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// One job for the latest missed slot, none for older ones.
    #[default]
    Latest,
    /// No job for missed slots.
    None,
    /// One job per missed slot, at most [`BATCH`] per pass.
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Latest => "latest",
            CatchUp::None => "none",
            CatchUp::All => "all",
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CatchUp {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "latest" => Ok(CatchUp::Latest),
            "none" => Ok(CatchUp::None),
            "all" => Ok(CatchUp::All),
            other => Err(format!(
                "catch_up must be 'latest', 'none' or 'all', not {other:?}"
            )),
        }
    }
}

/// A cron read in a time zone: the slots of a schedule.
#[derive(Debug, Clone)]
pub struct Slots {
    cron: Cron,
    zone: TimeZone,
}

impl Slots {
    /// Reads `cron` (5 fields, or 6 with seconds first) in the IANA time zone `timezone`, or
    /// says in words what is wrong with either. A cron that never matches (the 30th of
    /// February) is refused too: it would have no next slot.
    pub fn parse(cron: &str, timezone: &str) -> Result<Slots, String> {
        let zone = jiff::tz::db().get(timezone).map_err(|_| {
            format!(
                "unknown timezone {timezone:?}: expected an IANA name such as UTC or Europe/Berlin"
            )
        })?;
        let fields = cron.split_whitespace().count();
        if !(fields == 5 || fields == 6 || cron.trim_start().starts_with('@')) {
            return Err(format!(
                "bad cron {cron:?}: expected 5 fields (minute hour day-of-month month \
                 day-of-week) or 6 with seconds first, found {fields}"
            ));
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|error| format!("bad cron {cron:?}: {error}"))?;
        let slots = Slots { cron: parsed, zone };
        slots
            .after(Utc::now())
            .map_err(|_| format!("bad cron {cron:?}: it matches no time to come"))?;
        Ok(slots)
    }

    /// The first slot strictly after `at`.
    pub fn after(&self, at: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        let no_slot = |why: &dyn std::fmt::Display| format!("no slot after {at}: {why}");
        let from = self.zoned(at).ok_or_else(|| no_slot(&"out of range"))?;
        let slot = self
            .cron
            .find_next_occurrence(&from, false)
            .map_err(|error| no_slot(&error))?;
        utc_of(&slot).ok_or_else(|| no_slot(&"out of range"))
    }

    /// The last slot at or before `at`, if there is one.
    pub fn at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let from = self.zoned(at)?;
        let slot = self.cron.find_previous_occurrence(&from, true).ok()?;
        utc_of(&slot)
    }

    /// Whether `at` is one of the slots: false once the cron or time zone has been changed
    /// under a stored `next_run_at`.
    pub fn is_slot(&self, at: DateTime<Utc>) -> bool {
        at == whole_second(at) && self.after(at - TimeDelta::seconds(1)) == Ok(at)
    }

    /// `at`, to the whole second, in the schedule's time zone; `None` outside the years
    /// -9999 to 9999 that jiff reckons with.
    fn zoned(&self, at: DateTime<Utc>) -> Option<Zoned> {
        let second = Timestamp::from_second(whole_second(at).timestamp()).ok()?;
        Some(second.to_zoned(self.zone.clone()))
    }
}

fn utc_of(slot: &Zoned) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(slot.timestamp().as_second(), 0)
}

fn whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::seconds(1)).unwrap_or(at)
}

/// A schedule's row as a pass reads it: what the plan needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub catch_up: CatchUp,
    pub paused: bool,
    pub created_at: DateTime<Utc>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub next_run_at: Option<DateTime<Utc>>,
    /// The database's time when the row was read.
    pub now: DateTime<Utc>,
}

/// One move of a schedule's cursor: written only if the row still holds the cursor the step
/// before left (the row as read, for the first), with the job of `slot` inserted in the same
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The slot whose job this step inserts; `None` moves the cursor only.
    pub slot: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub next_run_at: DateTime<Utc>,
}

/// The steps of one pass over a schedule, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// More slots are due than one pass inserts ([`BATCH`]).
    pub more: bool,
}

/// Plans a pass over a schedule. A slot is due once `now` has reached it; a due slot older
/// than `late` is missed (no replica ran when it came), and `catch_up` says what becomes of
/// missed slots. A new schedule's first slot is the first after its `created_at`; a stored
/// `next_run_at` that is not a slot of the cron (the cron or time zone changed) is replaced
/// by the first slot after now. While paused, the cursor follows the time without inserting,
/// so that a resume owes nothing for the pause.
pub fn plan(slots: &Slots, row: &Cursor, late: Duration) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let last = row.last_run_at;
    let now = row.now;
    let next = match row.next_run_at {
        Some(next) if slots.is_slot(next) => next,
        Some(_) => {
            plan.steps.push(Step {
                slot: None,
                last_run_at: last,
                next_run_at: slots.after(now)?,
            });
            return Ok(plan);
        }
        None => {
            let from = last.map_or(row.created_at, |last| last.max(row.created_at));
            let next = slots.after(from)?;
            plan.steps.push(Step {
                slot: None,
                last_run_at: last,
                next_run_at: next,
            });
            next
        }
    };
    if next > now {
        return Ok(plan);
    }
    if row.paused {
        plan.steps.push(Step {
            slot: None,
            last_run_at: last,
            next_run_at: slots.after(now)?,
        });
        return Ok(plan);
    }
    let late = TimeDelta::from_std(late).unwrap_or(TimeDelta::MAX);
    let late_before = now
        .checked_sub_signed(late)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    // The first slot this pass inserts for on time, and what it does about missed ones.
    let mut slot = next;
    if next <= late_before {
        match row.catch_up {
            CatchUp::All => {}
            CatchUp::Latest => {
                let latest = slots.at_or_before(late_before).unwrap_or(next).max(next);
                plan.steps.push(insert(slots, latest)?);
                slot = slots.after(latest)?;
            }
            CatchUp::None => {
                slot = slots.after(late_before)?;
                plan.steps.push(Step {
                    slot: None,
                    last_run_at: last,
                    next_run_at: slot,
                });
            }
        }
    }
    while slot <= now {
        if plan.steps.iter().filter(|step| step.slot.is_some()).count() >= BATCH {
            plan.more = true;
            break;
        }
        let step = insert(slots, slot)?;
        slot = step.next_run_at;
        plan.steps.push(step);
    }
    Ok(plan)
}

fn insert(slots: &Slots, slot: DateTime<Utc>) -> Result<Step, String> {
    Ok(Step {
        slot: Some(slot),
        last_run_at: Some(slot),
        next_run_at: slots.after(slot)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a test time")
            .with_timezone(&Utc)
    }

    fn every_two_seconds() -> Slots {
        Slots::parse("*/2 * * * * *", "UTC").expect("a good cron")
    }

    fn cursor(catch_up: CatchUp, next: &str, now: &str) -> Cursor {
        Cursor {
            catch_up,
            paused: false,
            created_at: utc("2026-01-01T00:00:00Z"),
            last_run_at: None,
            next_run_at: Some(utc(next)),
            now: utc(now),
        }
    }

    fn inserted(plan: &Plan) -> Vec<DateTime<Utc>> {
        plan.steps.iter().filter_map(|step| step.slot).collect()
    }

    #[test]
    fn bad_crons_and_timezones_are_refused_in_words() {
        let error = Slots::parse("61 * * * *", "UTC").expect_err("minute 61");
        assert!(error.starts_with("bad cron \"61 * * * *\""), "{error}");
        let error = Slots::parse("* * * *", "UTC").expect_err("four fields");
        assert!(error.contains("found 4"), "{error}");
        let error = Slots::parse("* * * * *", "Mars/Olympus").expect_err("no such zone");
        assert!(
            error.starts_with("unknown timezone \"Mars/Olympus\""),
            "{error}"
        );
        let error = Slots::parse("0 0 30 2 *", "UTC").expect_err("February 30th");
        assert!(error.contains("matches no time"), "{error}");
        Slots::parse("*/2 * * * * *", "Europe/Berlin").expect("seconds first");
    }

    #[test]
    fn times_beyond_the_calendar_have_no_slot_and_say_so() {
        let slots = every_two_seconds();
        let error = slots
            .after(DateTime::<Utc>::MAX_UTC)
            .expect_err("year 262143");
        assert!(error.contains("out of range"), "{error}");
        assert_eq!(slots.at_or_before(DateTime::<Utc>::MIN_UTC), None);
        assert!(!slots.is_slot(DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn daily_slots_across_daylight_saving_changes_in_berlin() {
        let slots = Slots::parse("30 2 * * *", "Europe/Berlin").expect("a good cron");
        let berlin = |y, m, d, h, min| {
            let zoned = jiff::civil::datetime(y, m, d, h, min, 0, 0)
                .in_tz("Europe/Berlin")
                .expect("a Berlin time");
            utc_of(&zoned).expect("in range")
        };
        // Spring: on 29 March 2026 the clocks jump from 02:00 to 03:00, so 02:30 does not
        // exist; the slot is the first instant after the gap, 03:00 summer time (01:00 UTC).
        let mut at = berlin(2026, 3, 28, 12, 0);
        let mut march = Vec::new();
        for _ in 0..3 {
            at = slots.after(at).expect("a slot");
            march.push(at);
        }
        assert_eq!(
            march,
            [
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-30T00:30:00Z"),
                utc("2026-03-31T00:30:00Z"),
            ]
        );
        // The day before: 02:30 winter time is 01:30 UTC.
        assert_eq!(
            slots.after(berlin(2026, 3, 27, 12, 0)).expect("a slot"),
            utc("2026-03-28T01:30:00Z")
        );
        // Autumn: on 25 October 2026 the clocks go from 03:00 back to 02:00, so 02:30 happens
        // twice; the slot is the first of the two (00:30 UTC), once.
        let mut at = berlin(2026, 10, 24, 12, 0);
        let mut october = Vec::new();
        for _ in 0..3 {
            at = slots.after(at).expect("a slot");
            october.push(at);
        }
        assert_eq!(
            october,
            [
                utc("2026-10-25T00:30:00Z"),
                utc("2026-10-26T01:30:00Z"),
                utc("2026-10-27T01:30:00Z"),
            ]
        );
        // A stored slot stays a slot: the gap's 03:00 and the fold's first 02:30 included.
        for slot in march.iter().chain(&october) {
            assert!(slots.is_slot(*slot), "{slot}");
        }
    }

    #[test]
    fn a_new_schedule_starts_after_it_was_inserted() {
        let slots = every_two_seconds();
        let row = Cursor {
            catch_up: CatchUp::Latest,
            paused: false,
            created_at: utc("2026-01-01T00:00:00.500Z"),
            last_run_at: None,
            next_run_at: None,
            now: utc("2026-01-01T00:00:01Z"),
        };
        let plan = plan(&slots, &row, Duration::from_secs(2)).expect("a plan");
        assert_eq!(
            plan.steps,
            [Step {
                slot: None,
                last_run_at: None,
                next_run_at: utc("2026-01-01T00:00:02Z"),
            }]
        );
    }

    #[test]
    fn slots_on_time_each_get_a_job() {
        let slots = every_two_seconds();
        let row = cursor(
            CatchUp::None,
            "2026-01-01T00:00:10Z",
            "2026-01-01T00:00:10.2Z",
        );
        let plan = plan(&slots, &row, Duration::from_secs(1)).expect("a plan");
        assert_eq!(inserted(&plan), [utc("2026-01-01T00:00:10Z")]);
        assert_eq!(plan.steps[0].next_run_at, utc("2026-01-01T00:00:12Z"));
    }

    #[test]
    fn catch_up_after_an_outage() {
        let slots = every_two_seconds();
        let late = Duration::from_secs(1);
        // Slots 10, 12, …, 20 came due; 20 is on time (within `late`), the rest were missed.
        let (next, now) = ("2026-01-01T00:00:10Z", "2026-01-01T00:00:20.5Z");
        let latest = plan(&slots, &cursor(CatchUp::Latest, next, now), late).expect("a plan");
        assert_eq!(
            inserted(&latest),
            [utc("2026-01-01T00:00:18Z"), utc("2026-01-01T00:00:20Z")]
        );
        let none = plan(&slots, &cursor(CatchUp::None, next, now), late).expect("a plan");
        assert_eq!(inserted(&none), [utc("2026-01-01T00:00:20Z")]);
        assert_eq!(none.steps[0].next_run_at, utc("2026-01-01T00:00:20Z"));
        let all = plan(&slots, &cursor(CatchUp::All, next, now), late).expect("a plan");
        assert_eq!(inserted(&all).len(), 6);
        assert!(!all.more);
        // A long outage: at most BATCH slots a pass, and the pass says there is more.
        let long = cursor(CatchUp::All, next, "2026-01-02T00:00:00Z");
        let all = plan(&slots, &long, late).expect("a plan");
        assert_eq!(inserted(&all).len(), BATCH);
        assert!(all.more);
    }

    #[test]
    fn a_paused_schedule_follows_the_time_without_jobs() {
        let slots = every_two_seconds();
        let mut row = cursor(CatchUp::All, "2026-01-01T00:00:10Z", "2026-01-01T00:00:31Z");
        row.paused = true;
        let plan = plan(&slots, &row, Duration::from_secs(1)).expect("a plan");
        assert!(inserted(&plan).is_empty());
        assert_eq!(plan.steps[0].next_run_at, utc("2026-01-01T00:00:32Z"));
    }

    #[test]
    fn a_changed_cron_starts_from_its_next_slot() {
        let slots = Slots::parse("*/5 * * * * *", "UTC").expect("a good cron");
        let row = cursor(CatchUp::All, "2026-01-01T00:00:12Z", "2026-01-01T00:00:31Z");
        let plan = plan(&slots, &row, Duration::from_secs(1)).expect("a plan");
        assert!(inserted(&plan).is_empty());
        assert_eq!(plan.steps[0].next_run_at, utc("2026-01-01T00:00:35Z"));
    }
}
