//! The transaction and its guards: identifiers and uuids checked before they reach SQL, SQL
//! errors with the password scrubbed, begin (READ ONLY in check mode), apply, finish, backup.

use super::plan::Plan;
use crate::ansible::Failure;
use crate::nova::db::{self, DbCreds};
use anyhow::Result;
use mysql::prelude::Queryable;
use mysql::{Conn, TxOpts};
use serde_json::Value;

/// A uuid as Nova writes them: anything else is refused before it reaches SQL or a message.
pub fn check_uuid(u: &str) -> Result<(), Failure> {
    let ok = u.len() == 36
        && u.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            "instance_uuid is not a uuid (8-4-4-4-12 hex digits)",
        ))
    }
}

/// Database names go into SQL as identifiers (they cannot be parameters): letters, digits, `_`.
pub fn check_ident(name: &str) -> Result<(), Failure> {
    if !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "'{name}' is not a valid database name"
        )))
    }
}

pub(super) fn sql_err(e: mysql::Error, what: &str, creds: &DbCreds) -> anyhow::Error {
    Failure::new(format!(
        "{what} failed: {}; nothing was changed (the transaction is rolled back)",
        db::scrub(&e.to_string(), &creds.password)
    ))
    .into()
}

/// A transaction; READ ONLY when nothing may be written (the server then refuses any write).
pub fn begin<'a>(
    conn: &'a mut Conn,
    creds: &DbCreds,
    read_only: bool,
) -> Result<mysql::Transaction<'a>> {
    let opts = if read_only {
        TxOpts::default().set_access_mode(Some(mysql::AccessMode::ReadOnly))
    } else {
        TxOpts::default()
    };
    conn.start_transaction(opts)
        .map_err(|e| sql_err(e, "starting the transaction", creds))
}

/// Commit (or roll back) a transaction.
pub fn finish(tx: mysql::Transaction, creds: &DbCreds, commit: bool) -> Result<()> {
    if !commit {
        return tx.rollback().map_err(|e| sql_err(e, "rolling back", creds));
    }
    // Test hook: widen the window before COMMIT so a test can kill the database in it.
    if let Some(s) = std::env::var("NUMA_REPIN_TEST_PAUSE_BEFORE_COMMIT_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_secs(s));
    }
    tx.commit().map_err(|e| sql_err(e, "committing", creds))
}

/// Run a plan's writes, in order, inside the caller's transaction.
pub fn apply(tx: &mut mysql::Transaction, creds: &DbCreds, p: &Plan) -> Result<()> {
    for (i, (sql, params)) in p.writes.iter().enumerate() {
        tx.exec_drop(sql, params.clone()).map_err(|e| {
            sql_err(
                e,
                &format!(
                    "write {} of {} ({})",
                    i + 1,
                    p.writes.len(),
                    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
                ),
                creds,
            )
        })?;
    }
    Ok(())
}

/// Write the before values to `dir` before anything is committed.
pub fn backup(dir: &std::path::Path, uuid: &str, before: &Value) -> Result<String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(format!("cannot create backup_dir {}: {e}", dir.display())))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    // Two changes of one instance in one run (a row repaired, then its drift fixed) each keep
    // their own file.
    let mut path = dir.join(format!("{uuid}-{stamp}.json"));
    let mut n = 1;
    while path.exists() {
        path = dir.join(format!("{uuid}-{stamp}-{n}.json"));
        n += 1;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(before).unwrap_or_default())
        .map_err(|e| Failure::new(format!("cannot write backup {}: {e}", path.display())))?;
    Ok(path.display().to_string())
}
