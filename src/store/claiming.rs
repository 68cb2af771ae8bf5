//! How `SqlStore` claims, and writes a batch of DONE outcomes, for each dialect: with an UPDATE
//! that names its rows (`RETURNING`), or where there is none (MySQL) by selecting the rows
//! `FOR UPDATE` first and updating them by id in the same transaction. A limited queue's claim
//! locks its `queues` row, counts and reserves first (ARCHITECTURE.md, "Queues and their
//! limits"). Expanded by `sql.rs` for each dialect, beside the duties that use it.

/// The claiming half of `SqlStore<$db>`.
macro_rules! claiming {
    ($db:ty) => {
        impl SqlStore<$db> {
            /// Claims on `connection`, a transaction where the dialect has no RETURNING.
            async fn claim_on(
                connection: &mut <$db as sqlx::Database>::Connection,
                claim: &Claim<'_>,
            ) -> Result<Vec<ClaimedJob>> {
                if <$db as Dialect>::RETURNING {
                    let mut query = Sql::<$db>::claim_returning(claim);
                    let rows = query.build().fetch_all(&mut *connection).await?;
                    return claimed_rows(&rows, claim, claim.start);
                }
                let mut query = Sql::<$db>::claim_select(claim);
                let rows = query.build().fetch_all(&mut *connection).await?;
                // Read before the update: `attempts` is already the count before the run.
                let jobs = claimed_rows(&rows, claim, false)?;
                if !jobs.is_empty() {
                    let ids: Vec<i64> = jobs.iter().map(|job| job.id).collect();
                    let mut update = Sql::<$db>::claim_update(claim, &ids);
                    update.build().execute(&mut *connection).await?;
                }
                Ok(jobs)
            }

            /// A claim from the queues without a pause or a limit.
            async fn claim_unlimited(&self, claim: &Claim<'_>) -> Result<Vec<ClaimedJob>> {
                if claim.scope == Scope::UnlimitedOf(&[]) {
                    return Ok(Vec::new());
                }
                if <$db as Dialect>::RETURNING {
                    let mut connection = self.pool.acquire().await?;
                    return Self::claim_on(&mut connection, claim).await;
                }
                let mut tx = <$db as Backend>::begin(&self.pool).await?;
                let jobs = Self::claim_on(&mut tx, claim).await?;
                tx.commit().await?;
                Ok(jobs)
            }

            /// A claim from queue `name`, under its row's lock: what its pause, concurrency and
            /// rate allow.
            async fn claim_limited(
                &self,
                claim: &Claim<'_>,
                name: &str,
            ) -> Result<Vec<ClaimedJob>> {
                let mut tx = <$db as Backend>::begin(&self.pool).await?;
                let mut lock = Sql::<$db>::lock_queue(name);
                // No row: the queue's limits were just removed; the next unlimited claim takes
                // its jobs. (Dropping the transaction rolls it back.)
                let Some(row) = lock.build().fetch_optional(&mut *tx).await? else {
                    return Ok(Vec::new());
                };
                let limits = QueueLimits::read(&row)?;
                if limits.paused {
                    return Ok(Vec::new());
                }
                let mut wanted = claim.limit;
                if let Some(concurrency) = limits.concurrency {
                    let mut count = Sql::<$db>::busy(name, claim.dead_after);
                    let busy: i64 = count.build_query_scalar().fetch_one(&mut *tx).await?;
                    wanted =
                        wanted.min(u32::try_from(concurrency.saturating_sub(busy)).unwrap_or(0));
                }
                let (wanted, first, gap) = limits.starts(wanted, claim.ahead);
                if wanted == 0 {
                    return Ok(Vec::new());
                }
                let paced = limits.rate_per_second.is_some();
                let this = Claim {
                    limit: wanted,
                    // A job whose start the rate reserved starts then, not now.
                    start: claim.start && !paced,
                    ..claim.clone()
                };
                let mut jobs = Self::claim_on(&mut tx, &this).await?;
                if paced && !jobs.is_empty() {
                    let step =
                        |n: usize| chrono::Duration::microseconds((gap * n as f64 * 1e6) as i64);
                    let at = |n: usize| first.checked_add_signed(step(n)).unwrap_or(first);
                    for (n, job) in jobs.iter_mut().enumerate() {
                        job.wait = (at(n) - limits.now)
                            .to_std()
                            .ok()
                            .filter(|wait| !wait.is_zero());
                    }
                    let next = at(jobs.len());
                    Sql::<$db>::reserve_starts(name, next)
                        .build()
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(jobs)
            }

            /// Runs `update` on those of `worker`'s jobs `ids` (never empty) that are in
            /// `status`, which it guards (a batch of DONE outcomes from RUNNING, of starts from
            /// QUEUED), and returns the ids it changed: named by the UPDATE
            /// itself, or where it cannot name them (then `connection` must be a transaction)
            /// known from its count of found rows when it found them all, else locked first.
            async fn change_named<'q>(
                connection: &mut <$db as sqlx::Database>::Connection,
                status: Status,
                worker: &str,
                ids: &[i64],
                update: impl Fn(&str, &[i64]) -> sqlx::QueryBuilder<'q, $db>,
            ) -> Result<Vec<i64>> {
                if <$db as Dialect>::RETURNING {
                    let mut query = update(worker, ids);
                    query.push(" RETURNING id");
                    return query.build_query_scalar().fetch_all(&mut *connection).await;
                }
                // Nearly always every job of the batch is still ours: the UPDATE alone, behind
                // a savepoint, and the ids are those asked for when it found as many rows (a
                // MySQL session counts found rows). Only when some were settled elsewhere is it
                // undone, and the rows still ours locked and named first. This spares a locking
                // read of every row of every batch, and a round trip.
                sqlx::Executor::execute(&mut *connection, "SAVEPOINT jobsd_named").await?;
                let found = update(worker, ids)
                    .build()
                    .execute(&mut *connection)
                    .await?
                    .rows_affected();
                if usize::try_from(found).is_ok_and(|found| found == ids.len()) {
                    return Ok(ids.to_vec());
                }
                sqlx::Executor::execute(&mut *connection, "ROLLBACK TO SAVEPOINT jobsd_named")
                    .await?;
                let mut locked = Sql::<$db>::locked(status, worker, ids);
                let ours: Vec<i64> = locked
                    .build_query_scalar()
                    .fetch_all(&mut *connection)
                    .await?;
                if !ours.is_empty() {
                    update(worker, &ours)
                        .build()
                        .execute(&mut *connection)
                        .await?;
                }
                Ok(ours)
            }

            /// [`Self::change_named`] on a connection of its own, or where the dialect cannot
            /// name the rows it changed, in a transaction of its own: the one write of a batch
            /// of starts, or of jobs that ended before their start was written.
            async fn change_all_named<'q>(
                &self,
                status: Status,
                worker: &str,
                ids: &[i64],
                update: impl Fn(&str, &[i64]) -> sqlx::QueryBuilder<'q, $db>,
            ) -> Result<Vec<i64>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                if <$db as Dialect>::RETURNING {
                    let mut connection = self.pool.acquire().await?;
                    return Self::change_named(&mut connection, status, worker, ids, update).await;
                }
                retry_deadlocks(|| async {
                    let mut tx = <$db as Backend>::begin(&self.pool).await?;
                    let changed = Self::change_named(&mut tx, status, worker, ids, &update).await?;
                    tx.commit().await?;
                    Ok(changed)
                })
                .await
            }
        }
    };
}
pub(super) use claiming;
