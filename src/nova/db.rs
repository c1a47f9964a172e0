//! Connecting to Nova's database the way Kolla keeps its credentials.
//!
//! `[database] connection` in nova-conductor's nova.conf is an SQLAlchemy URL
//! (`mysql+pymysql://nova:PW@host:3306/nova?charset=utf8`); Kolla also keeps the password as
//! `nova_database_password` in /etc/kolla/passwords.yml. The password never appears in any
//! message: every error names the host and database only.

use crate::nova::conf::{self, ConfError};
use mysql::{Conn, Opts, OptsBuilder};
use std::path::Path;

/// Why Nova's database cannot be reached. No message holds the password (nor the URL, which
/// holds it).
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum DbError {
    /// The SQLAlchemy URL is not one this reads (`.0` says why, without the URL).
    #[error("{0}")]
    BadUrl(&'static str),
    /// The URL in a file is not one this reads.
    #[error("{file}: {why}")]
    BadUrlIn { file: String, why: &'static str },
    /// Kolla's nova.conf or passwords.yml cannot be read or parsed.
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error("{file} has no [database] connection")]
    NoConnection { file: String },
    #[error("{file} has no nova_database_password")]
    NoPassword { file: String },
    /// The driver's message, scrubbed of the password.
    #[error("cannot connect to Nova's database {who}: {why}; is MariaDB up and are the credentials right?")]
    Connect { who: String, why: String },
}

/// For callers that report a plain message (`Failure::new(e)`).
impl From<DbError> for String {
    fn from(e: DbError) -> String {
        e.to_string()
    }
}

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
pub fn parse_url(url: &str) -> Result<DbCreds, DbError> {
    let rest = url
        .strip_prefix("mysql+pymysql://")
        .or_else(|| url.strip_prefix("mysql://"))
        .or_else(|| url.strip_prefix("mysql+mysqldb://"))
        .ok_or(DbError::BadUrl(
            "the database connection is not a mysql:// or mysql+pymysql:// URL",
        ))?;
    let (userinfo, hostpart) = rest
        .rsplit_once('@')
        .ok_or(DbError::BadUrl("the database URL has no user@host part"))?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (hostport, dbq) = hostpart
        .split_once('/')
        .ok_or(DbError::BadUrl("the database URL names no database"))?;
    let database = dbq.split('?').next().unwrap_or("").to_string();
    if database.is_empty() {
        return Err(DbError::BadUrl("the database URL names no database"));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse()
                .map_err(|_| DbError::BadUrl("the database URL has a bad port"))?,
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

/// Credentials from Kolla's files: the conductor's nova.conf (read as `nova::conf` reads it: the
/// last of duplicate keys wins, as in oslo.config), and passwords.yml when given (its
/// `nova_database_password` wins over the URL's, as Kolla templates the URL from it).
pub fn from_kolla(nova_conf: &Path, passwords: Option<&Path>) -> Result<DbCreds, DbError> {
    let ini = conf::load_ini(&format!("nova_conf {}", nova_conf.display()), nova_conf)?;
    let url =
        conf::ini_get(&ini, "database", "connection").ok_or_else(|| DbError::NoConnection {
            file: nova_conf.display().to_string(),
        })?;
    let mut c = parse_url(&url).map_err(|e| match e {
        DbError::BadUrl(why) => DbError::BadUrlIn {
            file: nova_conf.display().to_string(),
            why,
        },
        e => e,
    })?;
    if let Some(p) = passwords {
        let field = format!("passwords {}", p.display());
        let y = crate::limits::read_text(&field, p, crate::limits::MAX_FILE_BYTES).map_err(
            |e| match e.kind {
                crate::limits::Kind::Unreadable { why } => ConfError::Unreadable {
                    file: p.display().to_string(),
                    why,
                },
                _ => ConfError::Refused(e),
            },
        )?;
        let pw = y
            .lines()
            .find_map(|l| l.strip_prefix("nova_database_password:"))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
            .ok_or_else(|| DbError::NoPassword {
                file: p.display().to_string(),
            })?;
        c.password = pw;
    }
    Ok(c)
}

/// nova-conductor's nova.conf where Kolla puts it: the default of the modules' `nova_conf`.
pub const KOLLA_CONDUCTOR_CONF: &str = "/etc/kolla/nova-conductor/nova.conf";

/// Where Kolla keeps its passwords file; read when it exists and no other is given.
pub const KOLLA_PASSWORDS: &str = "/etc/kolla/passwords.yml";

/// The credentials the modules' DB arguments name, one rule for every module: the SQLAlchemy
/// URL when given, else Kolla's files (`nova_conf`'s `[database] connection`, with the
/// passwords file's `nova_database_password`: `passwords_file`, else Kolla's default path when
/// it exists).
pub fn resolve(
    db_connection: Option<&str>,
    nova_conf: &Path,
    passwords_file: Option<&Path>,
) -> Result<DbCreds, DbError> {
    match db_connection {
        Some(url) => parse_url(url),
        None => {
            let default = Path::new(KOLLA_PASSWORDS);
            let pw = passwords_file.or_else(|| default.exists().then_some(default));
            from_kolla(nova_conf, pw)
        }
    }
}

/// What a module scrubs from its messages when given `db_connection`: the URL and, when it
/// parses, the password alone (a driver may echo it decoded).
pub fn url_secrets(db_connection: Option<&str>) -> Vec<String> {
    let mut s: Vec<String> = db_connection.iter().map(|u| u.to_string()).collect();
    if let Some(c) = db_connection.and_then(|u| parse_url(u).ok()) {
        s.push(c.password);
    }
    s
}

pub fn connect(c: &DbCreds) -> Result<Conn, DbError> {
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
    Conn::new(Opts::from(b)).map_err(|e| DbError::Connect {
        who: format!("{c:?}"),
        why: scrub(&e.to_string(), &c.password),
    })
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
        let e = parse_url("postgresql://u:hunter2@db/nova")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"));
        assert!(parse_url("mysql://u:hunter2@db")
            .unwrap_err()
            .to_string()
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
        let none = dir.path().join("none");
        let e = from_kolla(&none, None).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read {}: ", none.display())),
            "{e}"
        );
        std::fs::write(&conf, "[database]\nconnection = sqlite://x\n").unwrap();
        let e = from_kolla(&conf, None).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: the database connection is not a mysql:// or mysql+pymysql:// URL",
                conf.display()
            )
        );
        std::fs::write(&conf, "[DEFAULT]\nx = 1\n").unwrap();
        let e = from_kolla(&conf, None).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{} has no [database] connection", conf.display())
        );
        // duplicate keys: the last wins, as oslo.config reads them
        std::fs::write(
            &conf,
            "[database]\nconnection = mysql://nova:a@first/nova\nconnection = mysql://nova:b@last/nova\n",
        )
        .unwrap();
        let c = from_kolla(&conf, None).unwrap();
        assert_eq!((c.host.as_str(), c.password.as_str()), ("last", "b"));
    }

    #[test]
    fn resolve_prefers_the_url_and_scrubs_it() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nova.conf");
        std::fs::write(
            &conf,
            "[database]\nconnection = mysql://nova:fromconf@db/nova\n",
        )
        .unwrap();
        let url = "mysql+pymysql://nova:s%40cret@10.0.0.5/nova";
        let c = resolve(Some(url), &conf, None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.password.as_str()),
            ("10.0.0.5", "s@cret")
        );
        let pw = dir.path().join("passwords.yml");
        std::fs::write(&pw, "nova_database_password: fromfile\n").unwrap();
        let c = resolve(None, &conf, Some(&pw)).unwrap();
        assert_eq!((c.host.as_str(), c.password.as_str()), ("db", "fromfile"));
        assert_eq!(
            url_secrets(Some(url)),
            vec![url.to_string(), "s@cret".into()]
        );
        assert!(url_secrets(None).is_empty());
    }
}
