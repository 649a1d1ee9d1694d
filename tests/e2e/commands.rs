//! The `keyplane` binary's commands, run as real processes: `migrate` (and
//! every migration's rollback), `generate-master-key`, and start-up refusals
//! that must explain themselves.

use keyplane_tests::process::{ControlPlaneProcess, keyplane, refused_start};
use keyplane_tests::{Backend, both_backends};

both_backends!(migrate_applies_then_reports, orgs_that_held_something_are_registered_by_the_migration);

async fn migrate_applies_then_reports(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let Some(url) = backend.fresh_database(data.path()).await else { return };
    let dir = data.path().display().to_string();
    let base = ["--data-dir", dir.as_str(), "--database-url", url.as_str()];
    let before = keyplane(&[&["migrate", "--status"][..], &base].concat());
    assert!(before.status.success(), "{}", String::from_utf8_lossy(&before.stderr));
    let listed = String::from_utf8_lossy(&before.stdout);
    assert!(listed.contains("pending  m20261122_000001_api_keys"), "{listed}");

    let applied = keyplane(&[&["migrate"][..], &base].concat());
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let after = keyplane(&[&["migrate", "--status"][..], &base].concat());
    let listed = String::from_utf8_lossy(&after.stdout);
    assert!(listed.contains("applied  m20261122_000001_api_keys") && !listed.contains("pending"), "{listed}");
}

both_backends!(every_migration_rolls_back_and_applies_again);

/// Every migration's `down` undoes exactly its `up`: applied one at a time,
/// then rolled back one at a time with `keyplane migrate --rollback 1`, the
/// schema after each rollback is the one recorded before that migration was
/// applied; `keyplane migrate` then brings back the same schema.
async fn every_migration_rolls_back_and_applies_again(backend: Backend) {
    use keyplane_migrations::{Migrator, MigratorTrait};
    let data = tempfile::tempdir().unwrap();
    let Some(url) = backend.fresh_database(data.path()).await else { return };
    let dir = data.path().display().to_string();
    let base = ["--data-dir", dir.as_str(), "--database-url", url.as_str()];
    let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
    let mut before_each = Vec::new();
    for migration in Migrator::migrations() {
        before_each.push((migration.name().to_owned(), schema(&db).await));
        Migrator::up(&db, Some(1)).await.unwrap();
    }
    let migrated = schema(&db).await;
    assert!(migrated.iter().any(|line| line.contains("usage_key_hours")), "the schema is read: {migrated:?}");
    assert!(before_each[0].1.is_empty(), "a fresh database: {:?}", before_each[0]);

    let nothing = keyplane(&[&["migrate", "--rollback", "0"][..], &base].concat());
    assert!(!nothing.status.success() && String::from_utf8_lossy(&nothing.stderr).contains("--rollback"));
    assert_eq!(schema(&db).await, migrated);

    for (name, expected) in before_each.iter().rev() {
        let rolled_back = keyplane(&[&["migrate", "--rollback", "1"][..], &base].concat());
        assert!(rolled_back.status.success(), "{}", String::from_utf8_lossy(&rolled_back.stderr));
        let listed = String::from_utf8_lossy(&rolled_back.stdout);
        assert!(listed.contains(&format!("pending  {name}")), "{listed}");
        assert_eq!(&schema(&db).await, expected, "{name} rolled back leaves the schema it found");
    }
    assert!(Migrator::get_applied_migrations(&db).await.unwrap().is_empty());

    let applied = keyplane(&[&["migrate"][..], &base].concat());
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    assert_eq!(schema(&db).await, migrated, "applied again, the schema is the same");
}

/// Tables, columns, indexes and constraints of the database, one per line
/// (sorted), without the migrations table.
async fn schema(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT type || ' ' || name || ' ' || COALESCE(sql, '') AS line FROM sqlite_master \
             WHERE name NOT LIKE 'sqlite_%' AND tbl_name <> 'seaql_migrations'"
        }
        _ => {
            "SELECT table_name || '.' || column_name || ' ' || ordinal_position || ' ' || data_type || ' ' \
               || is_nullable || ' ' || COALESCE(column_default, '') || ' ' || COALESCE(collation_name, '') AS line \
               FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'seaql_migrations' \
             UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> 'seaql_migrations' \
             UNION ALL SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
               FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
               AND conrelid::regclass::text <> 'seaql_migrations' \
             UNION ALL SELECT 'sequence ' || sequencename FROM pg_sequences WHERE schemaname = 'public' \
               AND sequencename NOT LIKE 'seaql_migrations%' \
             UNION ALL SELECT 'type ' || typname FROM pg_type WHERE typnamespace = 'public'::regnamespace \
               AND typtype IN ('e', 'd')"
        }
    };
    let rows = db.query_all_raw(Statement::from_string(backend, sql)).await.expect("schema");
    let mut lines: Vec<String> = rows.iter().map(|row| row.try_get("", "line").expect("line")).collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn postgres_without_a_master_key_refuses_to_start_and_says_how() {
    let data = tempfile::tempdir().unwrap();
    let Some(url) = Backend::Postgres.fresh_database(data.path()).await else { return };
    let dir = data.path().display().to_string();
    let stderr = refused_start(&["--data-dir", &dir, "--database-url", &url]);
    assert!(stderr.contains("--master-key-file") && stderr.contains("generate-master-key"), "{stderr}");
    assert!(!data.path().join("master-key").exists(), "no key is generated for Postgres");
}

#[test]
fn generated_master_keys_are_usable_lines() {
    let output = keyplane(&["generate-master-key", "--id", "k7"]);
    assert!(output.status.success());
    let line = String::from_utf8(output.stdout).unwrap();
    let keys = keyplane_control_plane::crypto::MasterKeys::parse(&line).expect("parses");
    assert_eq!(keys.current_id(), "k7");
    let other = String::from_utf8(keyplane(&["generate-master-key"]).stdout).unwrap();
    assert_ne!(line.split('=').nth(1), other.split('=').nth(1), "random each time");
}

#[test]
fn help_documents_every_flag() {
    // Every flag in the configuration table (docs/operations.md) exists and is documented.
    let help = String::from_utf8(keyplane(&["serve", "--help"]).stdout).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md")).unwrap();
    let flags: Vec<&str> = readme
        .lines()
        .filter(|line| line.starts_with("| `--"))
        .flat_map(|line| line.split('`').filter(|part| part.starts_with("--")))
        .collect();
    assert!(flags.len() >= 25, "the configuration table lists the flags: {flags:?}");
    for flag in flags {
        assert!(help.contains(flag), "{flag} is in docs/operations.md but not in keyplane serve --help");
    }
    assert!(help.contains("KEYPLANE_DATABASE_URL"));
    // And every flag of `serve --help` has its row.
    let undocumented: Vec<String> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .filter_map(|line| line.split([' ', '=']).next())
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(|name| format!("--{name}"))
        .filter(|flag| *flag != "--help" && !readme.contains(&format!("`{flag}`")))
        .collect();
    assert!(undocumented.is_empty(), "flags missing from the table in docs/operations.md: {undocumented:?}");
}

#[tokio::test]
async fn a_bad_oauth_providers_file_stops_start_up_naming_the_line() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let file = data.path().join("providers.toml");
    std::fs::write(
        &file,
        "[providers.acme]\ntoken_url = \"https://auth.example/token\"\nclient_id = \"k\"\nclient_secret_env = \"X\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let providers = file.display().to_string();
    let stderr = refused_start(&["--data-dir", &dir, "--oauth-providers", &providers]);
    assert!(stderr.contains("line 5") && stderr.contains("colour"), "{stderr}");
}

#[tokio::test]
async fn ids_order_bytewise_on_postgres_whatever_the_database_collation() {
    use sea_orm::{ConnectionTrait, Statement};
    let Some(plane) = keyplane_tests::TestControlPlane::start(Backend::Postgres).await else { return };
    let db = plane.database().await;
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT table_name::text AS t, collation_name::text AS c FROM information_schema.columns \
             WHERE column_name = 'id' AND table_name IN \
             ('api_keys', 'webhook_subscriptions', 'webhook_deliveries', 'oauth_connections')",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        let (table, collation): (String, Option<String>) =
            (row.try_get("", "t").unwrap(), row.try_get("", "c").unwrap());
        assert_eq!(collation.as_deref(), Some("C"), "{table}.id must compare bytewise");
    }
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let data = tempfile::tempdir().unwrap();
    let output = keyplane(&["--log-format", "text", "migrate", "--data-dir", &data.path().display().to_string()]);
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("INFO"), "text log lines were written: {log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a piped log: {log:?}");
}

#[test]
fn a_taken_address_is_named_with_its_flag() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = refused_start(&["--data-dir", &dir, "--console-listen", &addr]);
    assert!(stderr.contains(&format!("--console-listen {addr}: ")) && stderr.contains("in use"), "{stderr}");
}

/// A second `keyplane serve` on one SQLite database is not silent: it
/// warns, naming the database and what to do; the first is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_database_warns() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let args = ["--data-dir".to_owned(), dir.clone(), "--argon2-memory-kib".into(), "256".into()];
    let first = ControlPlaneProcess::start(&args).await;
    let second = ControlPlaneProcess::start(&args).await;
    let (second_log, first_log) = (second.stop().await, first.stop().await);
    let warning = "another keyplane serve is running on this SQLite database";
    let warned: Vec<&str> = second_log.lines().filter(|line| line.contains(warning)).collect();
    assert_eq!(warned.len(), 1, "{second_log}");
    assert!(warned[0].contains("\"level\":\"WARN\"") && warned[0].contains("keyplane.db"), "{}", warned[0]);
    assert!(warned[0].contains("Postgres"), "it says what several replicas need");
    assert!(!first_log.contains(warning), "the first server is alone");
}

/// The sidecar warns about a credential file other users can read.
#[tokio::test]
async fn the_sidecar_warns_about_a_credential_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncBufReadExt;
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("sidecar-credential");
    std::fs::write(&file, "kp_live_not_a_real_token").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = tokio::process::Command::new(keyplane_tests::process::workspace_binary("keyplane-sidecar"))
        .args(["--control-plane", "http://127.0.0.1:1", "--log-format", "json"])
        .arg("--credential-file")
        .arg(&file)
        .args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("readable by other users") {
                return line;
            }
        }
        panic!("the sidecar exited without the warning");
    })
    .await
    .expect("the warning comes at start-up");
    assert!(warned.contains("WARN") && warned.contains("644"), "{warned}");
    assert!(!warned.contains("kp_live_not_a_real_token"), "the credential is not logged");
}

/// The orgs migration registers every org that held something before orgs
/// were records (here: roles and identities written while it was rolled
/// back), each named by its id, once.
async fn orgs_that_held_something_are_registered_by_the_migration(backend: Backend) {
    use sea_orm::{ConnectionTrait, Statement};
    let data = tempfile::tempdir().unwrap();
    let Some(url) = backend.fresh_database(data.path()).await else { return };
    let dir = data.path().display().to_string();
    let base = ["--data-dir", dir.as_str(), "--database-url", url.as_str()];
    let run = |args: &[&str]| {
        let output = keyplane(&[args, &base].concat());
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    run(&["migrate"]);
    // Back to before the orgs migration (and those after it).
    let status = keyplane(&[&["migrate", "--status"], &base[..]].concat());
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let since_orgs = status.lines().skip_while(|line| !line.ends_with("_orgs")).count();
    assert!(since_orgs >= 1, "{status}");
    run(&["migrate", "--rollback", &since_orgs.to_string()]);
    let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
    let now = "2026-12-01 00:00:00";
    for (id, org) in [("rol_1", "legacy-a"), ("rol_2", "legacy-a"), ("rol_3", "legacy-b")] {
        let sql = format!(
            "INSERT INTO roles (id, org_id, name, description, permissions, created_at, updated_at) \
             VALUES ('{id}', '{org}', '{id}', '', '[]', '{now}', '{now}')"
        );
        db.execute_unprepared(&sql).await.unwrap();
    }
    run(&["migrate"]);
    let statement = Statement::from_string(db.get_database_backend(), "SELECT id, display_name FROM orgs ORDER BY id");
    let rows = db.query_all_raw(statement).await.unwrap();
    let orgs: Vec<(String, String)> =
        rows.iter().map(|row| (row.try_get("", "id").unwrap(), row.try_get("", "display_name").unwrap())).collect();
    assert_eq!(orgs, [("legacy-a".into(), "legacy-a".into()), ("legacy-b".into(), "legacy-b".into())]);
}

/// A flag people guess for the console's port points to the real one.
#[test]
fn console_port_names_the_flag_that_sets_the_port() {
    let output = keyplane(&["serve", "--console-port", "9000"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--console-listen HOST:PORT") && !stderr.contains("--console-url"), "{stderr}");
}
