//! Rows written straight into the database for the load generators: the
//! API would spend an hour of argon2 on 100k keys, which is not what they
//! measure.

use keyplane_control_plane::service::records::{Environment, KeyStatus};
use keyplane_control_plane::store::api_keys::{self, NewKeyRow};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};

/// A well-formed argon2id hash no secret matches.
pub const UNMATCHABLE_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2VlZA$c2VlZA";

/// A key row: scope `orders:read`, no expiry.
pub fn key_row(
    org: &str,
    id: String,
    name: String,
    environment: Environment,
    status: KeyStatus,
    secret_hash: &str,
) -> api_keys::ActiveModel {
    let mut row = NewKeyRow {
        id,
        name,
        description: String::new(),
        environment,
        scopes: vec!["orders:read".into()],
        secret_hash: secret_hash.to_owned(),
        start: String::new(),
        expires_at: None,
        metadata: None,
        sealed_token: None,
        limits: Default::default(),
        created_by: "root".into(),
        rotated_from: None,
        identity_id: None,
    }
    .into_row(org)
    .expect("a key row");
    row.status = sea_orm::ActiveValue::Set(status);
    row
}

/// Inserts the `count` rows `row(i)` makes, 500 per statement (SQLite binds
/// at most 32,766 values in one, and a key row has 36 columns), then (on
/// Postgres) vacuums and analyzes the table as autovacuum would after a
/// bulk load.
pub async fn keys(db: &DatabaseConnection, count: usize, mut row: impl FnMut(usize) -> api_keys::ActiveModel) {
    let mut next = 0;
    while next < count {
        let end = (next + 500).min(count);
        api_keys::Entity::insert_many((next..end).map(&mut row)).exec(db).await.expect("seed keys");
        next = end;
    }
    analyze(db, "api_keys").await;
}

/// `VACUUM ANALYZE table` on Postgres; nothing on SQLite.
pub async fn analyze(db: &DatabaseConnection, table: &str) {
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        db.execute_unprepared(&format!("VACUUM ANALYZE {table}")).await.expect("analyze");
    }
}

/// Events numbered `numbers` (ids `msg_<tag><n:013>`), each delivered once
/// (one attempt) to one of `endpoints` in turn, `apart` seconds apart up
/// to now (the last number is now); one in ten failed, event types
/// `order.created` and (one in twenty) `invoice.paid`. Written by the
/// database itself; [`analyze_deliveries`] after the last call.
pub async fn deliveries(
    db: &DatabaseConnection,
    org: &str,
    endpoints: &[String],
    numbers: std::ops::RangeInclusive<usize>,
    apart: f64,
    tag: &str,
) {
    let run = |sql: String| async move { db.execute_unprepared(&sql).await.expect("seed deliveries") };
    let (first, last) = (numbers.start(), numbers.end());
    let postgres = db.get_database_backend() == sea_orm::DatabaseBackend::Postgres;
    let (series, at, pick) = if postgres {
        (
            format!("generate_series({first}, {last}) AS s(n)"),
            format!("now() - make_interval(secs => ({last} - n) * {apart}::float8)"),
            "(ARRAY[{endpoints}])[1 + n % {len}]",
        )
    } else {
        (
            format!(
                "(WITH RECURSIVE s(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM s WHERE n < {last}) SELECT n FROM s)"
            ),
            format!("strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-' || (({last} - n) * {apart}) || ' seconds')"),
            "json_extract(json_array({endpoints}), '$[' || (n % {len}) || ']')",
        )
    };
    let quoted: Vec<String> = endpoints.iter().map(|id| format!("'{id}'")).collect();
    let pick = pick.replace("{endpoints}", &quoted.join(",")).replace("{len}", &endpoints.len().to_string());
    let id = |prefix: &str| {
        if postgres {
            format!("'{prefix}{tag}' || lpad(n::text, 13, '0')")
        } else {
            format!("'{prefix}{tag}' || printf('%013d', n)")
        }
    };
    let event_type = "CASE WHEN n % 20 = 0 THEN 'invoice.paid' ELSE 'order.created' END";
    let failed = "n % 10 = 0";
    run(format!(
        "INSERT INTO webhook_events (id, org_id, event_type, payload, idempotency_key, created_at) \
         SELECT {}, '{org}', {event_type}, '{{\"order\":' || n || '}}', NULL, {at} FROM {series}",
        id("msg_")
    ))
    .await;
    run(format!(
        "INSERT INTO webhook_deliveries (id, org_id, subscription_id, event_id, event_type, status, attempt_count, \
         next_attempt_at, last_status_code, last_error, created_at, finished_at) \
         SELECT {}, '{org}', {pick}, {}, {event_type}, CASE WHEN {failed} THEN 'failed' ELSE 'succeeded' END, 1, \
         {at}, CASE WHEN {failed} THEN 500 ELSE 200 END, NULL, {at}, {at} FROM {series}",
        id("dlv_"),
        id("msg_")
    ))
    .await;
    run(format!(
        "INSERT INTO webhook_attempts (id, delivery_id, org_id, number, started_at, status_code, latency_micros, \
         error, response_excerpt) \
         SELECT {}, {}, '{org}', 1, {at}, CASE WHEN {failed} THEN 500 ELSE 200 END, 1000 + n % 5000, NULL, 'ok' \
         FROM {series}",
        id("att_"),
        id("dlv_")
    ))
    .await;
}

/// [`analyze`] of the tables [`deliveries`] writes.
pub async fn analyze_deliveries(db: &DatabaseConnection) {
    for table in ["webhook_events", "webhook_deliveries", "webhook_attempts"] {
        analyze(db, table).await;
    }
}

/// Hourly rows for every key over `days`, daily rows over `days`, and a
/// day of org minutes, written by the database itself in time order, as
/// reports write them (a bucket's rows sit together on disk, not one key's).
/// `now` places the newest buckets; the key ids go through a scratch table
/// `bench_keys` (dropped at the end).
pub async fn rollups(
    db: &DatabaseConnection,
    org: &str,
    ids: &[String],
    days: i64,
    now: chrono::DateTime<chrono::Utc>,
) {
    use chrono::{DurationRound, TimeDelta};
    let bucket = |unit: TimeDelta| now.duration_trunc(unit).expect("bucket").timestamp();
    let (this_hour, today, this_minute) =
        (bucket(TimeDelta::hours(1)), bucket(TimeDelta::days(1)), bucket(TimeDelta::minutes(1)));
    let sqlite = db.get_database_backend() == sea_orm::DatabaseBackend::Sqlite;
    let keys_table = "bench_keys";
    let create = format!("CREATE TABLE {keys_table} (key_id TEXT)");
    let run = |sql: String| async move {
        db.execute_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql)).await
    };
    run(create).await.expect("temp table");
    for chunk in ids.chunks(1000) {
        let values: Vec<String> = chunk.iter().map(|id| format!("('{id}')")).collect();
        run(format!("INSERT INTO {keys_table} VALUES {}", values.join(","))).await.expect("keys");
    }
    let series = |from: i64, to: i64, step: i64| {
        if sqlite {
            format!(
                "(WITH RECURSIVE s(b) AS (SELECT {from} UNION ALL SELECT b + {step} FROM s WHERE b + {step} <= {to}) SELECT b FROM s)"
            )
        } else {
            format!("(SELECT generate_series({from}, {to}, {step}) AS b)")
        }
    };
    let counts = "(abs(random()) % 50) + 1, abs(random()) % 3, 0, abs(random()) % 2";
    let pg_counts = "(random() * 50)::bigint + 1, (random() * 3)::bigint, 0, (random() * 2)::bigint";
    let counts = if sqlite { counts } else { pg_counts };
    for (table, from, to, step) in [
        ("usage_key_hours", this_hour - days * 86_400, this_hour, 3600),
        ("usage_key_days", today - days * 86_400, today, 86_400),
    ] {
        run(format!(
            "INSERT INTO {table} (bucket, key_id, org_id, environment, allowed, unauthorized, forbidden, rate_limited) \
             SELECT t.b, k.key_id, '{org}', 'live', {counts} FROM {} t CROSS JOIN {keys_table} k ORDER BY t.b, k.key_id",
            series(from, to, step)
        ))
        .await
        .expect("key rollups");
    }
    run(format!(
        "INSERT INTO usage_org_minutes (bucket, org_id, environment, allowed, unauthorized, forbidden, rate_limited) \
         SELECT t.b, '{org}', 'live', {counts} FROM {} t",
        series(this_minute - 86_400, this_minute, 60)
    ))
    .await
    .expect("org minutes");
    // The org rows are the sums of the key rows, as reports write them
    // (TopKeys relies on it).
    for granularity in ["hours", "days"] {
        run(format!(
            "INSERT INTO usage_org_{granularity} (bucket, org_id, environment, allowed, unauthorized, forbidden, rate_limited) \
             SELECT bucket, org_id, environment, SUM(allowed), SUM(unauthorized), SUM(forbidden), SUM(rate_limited) \
             FROM usage_key_{granularity} WHERE org_id = '{org}' GROUP BY bucket, org_id, environment"
        ))
        .await
        .expect("org rollups");
    }
    run(format!("DROP TABLE {keys_table}")).await.expect("drop the scratch table");
    analyze(db, "usage_key_hours").await;
    analyze(db, "usage_key_days").await;
}
