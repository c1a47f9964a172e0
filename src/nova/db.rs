//! Connecting to Nova's database the way Kolla keeps its credentials.
//!
//! `[database] connection` in nova-conductor's nova.conf is an SQLAlchemy URL
//! (`mysql+pymysql://nova:PW@host:3306/nova?charset=utf8`); Kolla also keeps the password as
//! `nova_database_password` in /etc/kolla/passwords.yml. The password never appears in any
//! message: every error names the host and database only.

use mysql::{Conn, Opts, OptsBuilder};
use std::path::Path;

#[derive(Clone)]
pub struct DbCreds {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Nova's cell database (instances, instance_extra, compute_nodes, migrations).
    pub database: String,
    pub socket: Option<String>,
}

impl std::fmt::Debug for DbCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse an SQLAlchemy MySQL URL. Errors never echo the URL (it holds the password).
pub fn parse_url(url: &str) -> Result<DbCreds, String> {
    let rest = url
        .strip_prefix("mysql+pymysql://")
        .or_else(|| url.strip_prefix("mysql://"))
        .or_else(|| url.strip_prefix("mysql+mysqldb://"))
        .ok_or("the database connection is not a mysql:// or mysql+pymysql:// URL")?;
    let (userinfo, hostpart) = rest
        .rsplit_once('@')
        .ok_or("the database URL has no user@host part")?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (hostport, dbq) = hostpart
        .split_once('/')
        .ok_or("the database URL names no database")?;
    let database = dbq.split('?').next().unwrap_or("").to_string();
    if database.is_empty() {
        return Err("the database URL names no database".into());
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse()
                .map_err(|_| "the database URL has a bad port".to_string())?,
        ),
        None => (hostport.to_string(), 3306),
    };
    let socket = dbq.split_once('?').and_then(|(_, q)| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("unix_socket=").map(pct_decode))
    });
    Ok(DbCreds {
        host,
        port,
        user: pct_decode(user),
        password: pct_decode(password),
        database,
        socket,
    })
}

/// `[section] key` of an ini file (first match), as oslo.config reads simple values.
pub fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            cur = s.trim().to_string();
        } else if cur == section {
            if let Some((k, v)) = t.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// Credentials from Kolla's files: the conductor's nova.conf, and passwords.yml when given
/// (its `nova_database_password` wins over the URL's, as Kolla templates the URL from it).
pub fn from_kolla(nova_conf: &Path, passwords: Option<&Path>) -> Result<DbCreds, String> {
    let read = |what: &str, p: &Path| {
        crate::limits::read_text(what, p, crate::limits::MAX_FILE_BYTES).map_err(|e| match e.kind {
            crate::limits::Kind::Unreadable { why } => {
                format!("cannot read {}: {why}", p.display())
            }
            k => format!("{what} {}: {k}", p.display()),
        })
    };
    let text = read("nova_conf", nova_conf)?;
    let url = ini_value(&text, "database", "connection")
        .ok_or_else(|| format!("{} has no [database] connection", nova_conf.display()))?;
    let mut c = parse_url(&url).map_err(|e| format!("{}: {e}", nova_conf.display()))?;
    if let Some(p) = passwords {
        let y = read("passwords", p)?;
        let pw = y
            .lines()
            .find_map(|l| l.strip_prefix("nova_database_password:"))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
            .ok_or_else(|| format!("{} has no nova_database_password", p.display()))?;
        c.password = pw;
    }
    Ok(c)
}

pub fn connect(c: &DbCreds) -> Result<Conn, String> {
    let mut b = OptsBuilder::new()
        .ip_or_hostname(Some(c.host.clone()))
        .tcp_port(c.port)
        .user(Some(c.user.clone()))
        .pass(Some(c.password.clone()))
        .db_name(Some(c.database.clone()))
        .tcp_connect_timeout(Some(std::time::Duration::from_secs(10)))
        .read_timeout(Some(std::time::Duration::from_secs(60)))
        .write_timeout(Some(std::time::Duration::from_secs(60)));
    if let Some(s) = &c.socket {
        b = b.socket(Some(s.clone()));
    }
    Conn::new(Opts::from(b)).map_err(|e| format!("cannot connect to Nova's database {}@{}:{}/{}: {}; is MariaDB up and are the credentials right?", c.user, c.host, c.port, c.database, scrub(&e.to_string(), &c.password)))
}

/// Remove a secret from a driver message (some echo the connection parameters).
pub fn scrub(msg: &str, secret: &str) -> String {
    if secret.is_empty() {
        msg.to_string()
    } else {
        msg.replace(secret, "********")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlalchemy_urls() {
        let c = parse_url("mysql+pymysql://nova:s%40cret@10.0.0.5:3307/nova?charset=utf8").unwrap();
        assert_eq!(
            (
                c.user.as_str(),
                c.password.as_str(),
                c.host.as_str(),
                c.port,
                c.database.as_str()
            ),
            ("nova", "s@cret", "10.0.0.5", 3307, "nova")
        );
        let c = parse_url("mysql://u:p@db/nova_cell1").unwrap();
        assert_eq!((c.port, c.database.as_str()), (3306, "nova_cell1"));
        let e = parse_url("postgresql://u:hunter2@db/nova").unwrap_err();
        assert!(!e.contains("hunter2"));
        assert!(parse_url("mysql://u:hunter2@db")
            .unwrap_err()
            .contains("names no database"));
    }

    #[test]
    fn kolla_files() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nova.conf");
        std::fs::write(&conf, "[DEFAULT]\nx=1\n[database]\nconnection = mysql+pymysql://nova:old@db:3306/nova\nmax_retries = -1\n").unwrap();
        let pw = dir.path().join("passwords.yml");
        std::fs::write(
            &pw,
            "keystone_admin_password: x\nnova_database_password: \"n3w\"\n",
        )
        .unwrap();
        let c = from_kolla(&conf, Some(&pw)).unwrap();
        assert_eq!((c.password.as_str(), c.host.as_str()), ("n3w", "db"));
        assert_eq!(format!("{c:?}"), "nova@db:3306/nova");
        assert!(from_kolla(&dir.path().join("none"), None)
            .unwrap_err()
            .contains("cannot read"));
    }
}
