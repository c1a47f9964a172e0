//! Credentials and Keystone: the `os_auth` argument, or Kolla's files (`admin-openrc.sh`,
//! `passwords.yml`, `globals.yml`) turned into the same [`OsAuth`]; then Keystone v3 password
//! authentication (`POST /v3/auth/tokens`), the token from `X-Subject-Token` and the Neutron
//! endpoint from the returned catalog.
//!
//! Parsing is pure (text in, values out) and tested on fixtures; only [`login`] does I/O.
//! Invariant: no error here carries a password or a token (messages name files, keys, URLs).

use super::api::{self, Http};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Keystone v3 password credentials, as `openstack` CLI's `OS_*` variables name them.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OsAuth {
    /// Keystone URL, with or without `/v3` (`http://10.0.0.10:5000`).
    pub auth_url: String,
    /// User name.
    pub username: String,
    /// Password (a secret: never in results or errors).
    pub password: String,
    /// Project (tenant) to scope the token to.
    pub project_name: String,
    /// Domain of the user.
    #[serde(default = "default_domain")]
    pub user_domain_name: String,
    /// Domain of the project.
    #[serde(default = "default_domain")]
    pub project_domain_name: String,
    /// Region of the Neutron endpoint in the catalog; needed when the catalog has several.
    #[serde(default)]
    pub region_name: Option<String>,
    /// Endpoint interface in the catalog: internal, public or admin.
    #[serde(default = "default_interface")]
    pub interface: String,
}

fn default_domain() -> String {
    "Default".into()
}
fn default_interface() -> String {
    "internal".into()
}

/// What goes wrong getting credentials, a token or the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("{path} is not valid YAML: {why}")]
    Yaml { path: PathBuf, why: String },
    #[error("{path} has no {key}")]
    MissingKey { path: PathBuf, key: String },
    #[error("{dir} has neither admin-openrc.sh nor globals.yml: cannot tell where Keystone is")]
    NoKollaAuth { dir: PathBuf },
    #[error("Keystone authentication failed: {0}")]
    Keystone(api::Error),
    #[error("Keystone at {url} answered without an X-Subject-Token header")]
    NoToken { url: String },
    #[error("the Keystone catalog has no network endpoint with interface {interface}{region}; it has: {available}. Give neutron_url, or the right interface/region_name")]
    NoEndpoint {
        interface: String,
        region: String,
        available: String,
    },
    #[error("the Keystone catalog has network endpoints with interface {interface} in several regions ({regions}): give region_name")]
    AmbiguousRegion { interface: String, regions: String },
}

// The inner error is part of the message, not a `source` (anyhow's `{:#}` would print it twice).
impl From<api::Error> for Error {
    fn from(e: api::Error) -> Self {
        Error::Keystone(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Kolla's files.

/// `export KEY=VALUE` lines of a shell rc file (`admin-openrc.sh`), values unquoted.
/// Other lines (comments, loops, `unset`) are ignored.
pub fn parse_openrc(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let l = line.trim();
        let Some(rest) = l.strip_prefix("export ") else {
            continue;
        };
        let Some((k, v)) = rest.trim().split_once('=') else {
            continue;
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.insert(k.to_string(), unquote_shell(v.trim()));
    }
    out
}

/// A shell word's value: `'...'` verbatim, `"..."` with `\"`, `\\`, `\$`, `` \` `` unescaped,
/// bare up to an unquoted ` #` comment.
fn unquote_shell(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('\'') {
        return inner.split('\'').next().unwrap_or("").to_string();
    }
    if let Some(inner) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some(n @ ('"' | '\\' | '$' | '`')) => out.push(n),
                    Some(n) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => out.push('\\'),
                },
                c => out.push(c),
            }
        }
        return out;
    }
    v.split(" #").next().unwrap_or("").trim().to_string()
}

/// The top-level scalar values of a YAML file (`passwords.yml`, `globals.yml`) as strings;
/// nested maps and lists are skipped. `path` only names the file in errors (never the text).
pub fn yaml_scalars(text: &str, path: &Path) -> Result<BTreeMap<String, String>, Error> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(text).map_err(|e| Error::Yaml {
        path: path.to_path_buf(),
        // Only the position: the scanner's text could quote a password.
        why: format!("line {} column {}", e.marker().line(), e.marker().col() + 1),
    })?;
    let mut out = BTreeMap::new();
    if let Some(Yaml::Hash(h)) = docs.first() {
        for (k, v) in h {
            let Some(k) = k.as_str() else { continue };
            let v = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Real(r) => r.clone(),
                Yaml::Boolean(b) => b.to_string(),
                _ => continue,
            };
            out.insert(k.to_string(), v);
        }
    }
    Ok(out)
}

/// Ansible's truthy strings (`yes`, `true`, `on`, `1`), as Kolla's globals use them.
pub fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "yes" | "true" | "on" | "1"
    )
}

/// The interface as the catalog names it (`internalURL` -> `internal`).
pub fn normalize_interface(i: &str) -> String {
    let i = i.trim();
    i.strip_suffix("URL").unwrap_or(i).to_ascii_lowercase()
}

/// Credentials from an openrc's variables, the password from passwords.yml unless the rc has one.
pub fn from_openrc(
    rc: &BTreeMap<String, String>,
    rc_path: &Path,
    password: Option<String>,
    passwords_path: &Path,
) -> Result<(OsAuth, Option<PathBuf>), Error> {
    let need = |key: &str| {
        rc.get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| Error::MissingKey {
                path: rc_path.to_path_buf(),
                key: key.into(),
            })
    };
    let opt = |key: &str| rc.get(key).filter(|v| !v.is_empty()).cloned();
    let password = match opt("OS_PASSWORD").or(password) {
        Some(p) => p,
        None => {
            return Err(Error::MissingKey {
                path: passwords_path.to_path_buf(),
                key: "keystone_admin_password".into(),
            })
        }
    };
    let auth = OsAuth {
        auth_url: need("OS_AUTH_URL")?,
        username: opt("OS_USERNAME").unwrap_or_else(|| "admin".into()),
        password,
        project_name: opt("OS_PROJECT_NAME")
            .or_else(|| opt("OS_TENANT_NAME"))
            .unwrap_or_else(|| "admin".into()),
        user_domain_name: opt("OS_USER_DOMAIN_NAME").unwrap_or_else(default_domain),
        project_domain_name: opt("OS_PROJECT_DOMAIN_NAME").unwrap_or_else(default_domain),
        region_name: opt("OS_REGION_NAME"),
        interface: opt("OS_INTERFACE")
            .or_else(|| opt("OS_ENDPOINT_TYPE"))
            .map(|i| normalize_interface(&i))
            .unwrap_or_else(default_interface),
    };
    Ok((auth, opt("OS_CACERT").map(PathBuf::from)))
}

/// Credentials from globals.yml (Keystone on the internal VIP or FQDN, port 5000, user and
/// project `admin`) and the password from passwords.yml.
pub fn from_globals(
    g: &BTreeMap<String, String>,
    globals_path: &Path,
    password: String,
) -> Result<OsAuth, Error> {
    // The fqdn's default is the template "{{ kolla_internal_vip_address }}": that means the VIP.
    let fqdn = g
        .get("kolla_internal_fqdn")
        .filter(|v| !v.trim().is_empty() && !v.contains("{{"));
    let host = match fqdn.or_else(|| g.get("kolla_internal_vip_address")) {
        Some(h) => h.trim().to_string(),
        None => {
            return Err(Error::MissingKey {
                path: globals_path.to_path_buf(),
                key: "kolla_internal_fqdn or kolla_internal_vip_address".into(),
            })
        }
    };
    let tls = g
        .get("kolla_enable_tls_internal")
        .is_some_and(|v| truthy(v));
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]") // an IPv6 VIP
    } else {
        host
    };
    Ok(OsAuth {
        auth_url: format!("{}://{host}:5000", if tls { "https" } else { "http" }),
        username: "admin".into(),
        password,
        project_name: "admin".into(),
        user_domain_name: default_domain(),
        project_domain_name: default_domain(),
        region_name: g
            .get("openstack_region_name")
            .filter(|r| !r.contains("{{"))
            .cloned(),
        interface: default_interface(),
    })
}

fn read(path: &Path) -> Result<String, Error> {
    crate::limits::read_text("kolla file", path, crate::limits::MAX_FILE_BYTES).map_err(|e| {
        Error::Read {
            path: path.to_path_buf(),
            why: e.kind.to_string(),
        }
    })
}

/// Credentials from a Kolla config dir (`/etc/kolla`): admin-openrc.sh (else globals.yml) and
/// passwords.yml's `keystone_admin_password`. Also the openrc's `OS_CACERT`, if any.
pub fn from_kolla_dir(dir: &Path) -> Result<(OsAuth, Option<PathBuf>), Error> {
    let pw_path = dir.join("passwords.yml");
    let rc_path = dir.join("admin-openrc.sh");
    let globals_path = dir.join("globals.yml");
    let password = |required: bool| -> Result<Option<String>, Error> {
        if !required && !pw_path.exists() {
            return Ok(None);
        }
        let p = yaml_scalars(&read(&pw_path)?, &pw_path)?
            .get("keystone_admin_password")
            .filter(|v| !v.is_empty())
            .cloned();
        match p {
            None if required => Err(Error::MissingKey {
                path: pw_path.clone(),
                key: "keystone_admin_password".into(),
            }),
            p => Ok(p),
        }
    };
    if rc_path.exists() {
        let rc = parse_openrc(&read(&rc_path)?);
        let pw = if rc.get("OS_PASSWORD").is_some_and(|p| !p.is_empty()) {
            None
        } else {
            password(true)?
        };
        return from_openrc(&rc, &rc_path, pw, &pw_path);
    }
    if globals_path.exists() {
        let g = yaml_scalars(&read(&globals_path)?, &globals_path)?;
        let pw = password(true)?.unwrap_or_default();
        return Ok((from_globals(&g, &globals_path, pw)?, None));
    }
    Err(Error::NoKollaAuth {
        dir: dir.to_path_buf(),
    })
}

// ---------------------------------------------------------------------------------------------
// Keystone.

/// `POST` target for a token: `{auth_url}/v3/auth/tokens`, whether auth_url ends in `/v3` or not.
pub fn tokens_url(auth_url: &str) -> String {
    let u = auth_url.trim().trim_end_matches('/');
    let u = u.strip_suffix("/v3").unwrap_or(u);
    format!("{u}/v3/auth/tokens")
}

/// The body of a v3 password authentication scoped to a project.
pub fn token_request(a: &OsAuth) -> Value {
    json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": a.username, "domain": {"name": a.user_domain_name}, "password": a.password}}},
        "scope": {"project": {"name": a.project_name, "domain": {"name": a.project_domain_name}}}
    }})
}

/// The Neutron endpoint (type `network`) for `interface` and, if given, `region` (matched
/// against `region` and `region_id`), from a token's catalog.
pub fn select_endpoint(
    token: &Value,
    interface: &str,
    region: Option<&str>,
) -> Result<String, Error> {
    let want = normalize_interface(interface);
    let empty = Vec::new();
    let services = token
        .pointer("/token/catalog")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut available = Vec::new();
    let mut found: Vec<(String, String)> = Vec::new(); // (region, url)
    for s in services
        .iter()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("network"))
    {
        for e in s
            .get("endpoints")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
        {
            let get = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let (iface, reg, reg_id, url) = (
                get("interface"),
                get("region"),
                get("region_id"),
                get("url"),
            );
            available.push(format!(
                "{iface}@{}",
                if reg.is_empty() { &reg_id } else { &reg }
            ));
            if normalize_interface(&iface) != want || url.is_empty() {
                continue;
            }
            if let Some(r) = region {
                if r != reg && r != reg_id {
                    continue;
                }
            }
            found.push((if reg.is_empty() { reg_id } else { reg }, url));
        }
    }
    let mut regions: Vec<&str> = found.iter().map(|(r, _)| r.as_str()).collect();
    regions.sort();
    regions.dedup();
    match (found.first(), regions.len()) {
        (None, _) => Err(Error::NoEndpoint {
            interface: want,
            region: region
                .map(|r| format!(" in region {r}"))
                .unwrap_or_default(),
            available: if available.is_empty() {
                "no network service".into()
            } else {
                available.join(", ")
            },
        }),
        (Some(_), n) if n > 1 => Err(Error::AmbiguousRegion {
            interface: want,
            regions: regions.join(", "),
        }),
        (Some((_, url)), _) => Ok(url.clone()),
    }
}

/// Authenticate: the token (also set on `http`, and registered as a secret) and the Neutron
/// endpoint of the catalog (`None` when `need_endpoint` is false and none is found).
pub fn login(http: &mut Http, a: &OsAuth, need_endpoint: bool) -> Result<Option<String>, Error> {
    http.add_secret(&a.password);
    let url = tokens_url(&a.auth_url);
    let answer = http.send("POST", &url, Some(&token_request(a)))?;
    let token = answer
        .subject_token
        .filter(|t| !t.is_empty())
        .ok_or(Error::NoToken { url })?;
    http.set_token(token);
    match select_endpoint(&answer.body, &a.interface, a.region_name.as_deref()) {
        Ok(u) => Ok(Some(u)),
        Err(e) if need_endpoint => Err(e),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/modules/neutron_port_binding/fixtures")
            .join(name)
    }

    #[test]
    fn openrc_values_quoted_or_not() {
        let rc = parse_openrc(include_str!("fixtures/admin-openrc.sh"));
        assert_eq!(rc["OS_PROJECT_DOMAIN_NAME"], "Default");
        assert_eq!(rc["OS_USER_DOMAIN_NAME"], "Default");
        assert_eq!(rc["OS_REGION_NAME"], "RegionOne");
        assert_eq!(rc["OS_CACERT"], "/etc/kolla/certificates/ca/root.crt");
        assert!(!rc.contains_key("key")); // the for loop is not an export
        let rc =
            parse_openrc("export A=\"x \\\"y\\\" \\$z\"\nexport B='a\"b' \nexport C=plain # c\n");
        assert_eq!(rc["A"], "x \"y\" $z");
        assert_eq!(rc["B"], "a\"b");
        assert_eq!(rc["C"], "plain");
    }

    #[test]
    fn openrc_password_wins_over_passwords_yml() {
        let rc = parse_openrc(include_str!("fixtures/admin-openrc.sh"));
        let (a, ca) =
            from_openrc(&rc, &fx("admin-openrc.sh"), Some("yml".into()), &fx("p")).unwrap();
        assert_eq!(a.password, "s3cr3t-fr0m-openrc");
        assert_eq!(a.auth_url, "https://10.0.0.10:5000");
        assert_eq!(a.interface, "internal");
        assert_eq!(a.region_name.as_deref(), Some("RegionOne"));
        assert_eq!(
            ca,
            Some(PathBuf::from("/etc/kolla/certificates/ca/root.crt"))
        );
        let mut rc2 = rc.clone();
        rc2.remove("OS_PASSWORD");
        rc2.remove("OS_INTERFACE");
        let (a, _) = from_openrc(&rc2, &fx("rc"), Some("yml".into()), &fx("p")).unwrap();
        assert_eq!(a.password, "yml");
        assert_eq!(a.interface, "internal"); // from OS_ENDPOINT_TYPE=internalURL
        let e = from_openrc(&rc2, &fx("rc"), None, &fx("passwords.yml")).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("passwords.yml has no keystone_admin_password"),
            "{e}"
        );
        rc2.remove("OS_AUTH_URL");
        let e = from_openrc(&rc2, &fx("admin-openrc.sh"), Some("x".into()), &fx("p"));
        assert!(e
            .unwrap_err()
            .to_string()
            .ends_with("admin-openrc.sh has no OS_AUTH_URL"));
    }

    #[test]
    fn passwords_yml_top_level_only() {
        let y = yaml_scalars(include_str!("fixtures/passwords.yml"), &fx("passwords.yml")).unwrap();
        assert_eq!(
            y["keystone_admin_password"],
            "kA#pw: with 'quotes' and \"escapes\""
        );
        assert_eq!(y["nova_database_password"], "n0va");
        assert!(!y.contains_key("keystone_ssh_key"));
        let e = yaml_scalars("a: [1\nkeystone_admin_password: hunter2: x\n", &fx("p.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.yml is not valid YAML: line"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn globals_give_keystone_on_the_vip() {
        let g = yaml_scalars(include_str!("fixtures/globals.yml"), &fx("globals.yml")).unwrap();
        let a = from_globals(&g, &fx("globals.yml"), "pw".into()).unwrap();
        assert_eq!(a.auth_url, "https://10.0.0.10:5000");
        assert_eq!(
            (a.username.as_str(), a.project_name.as_str()),
            ("admin", "admin")
        );
        assert_eq!(a.region_name.as_deref(), Some("RegionOne"));
        let mut g2 = g.clone();
        g2.insert("kolla_internal_fqdn".into(), "int.cloud.example".into());
        g2.insert("kolla_enable_tls_internal".into(), "no".into());
        let a = from_globals(&g2, &fx("globals.yml"), "pw".into()).unwrap();
        assert_eq!(a.auth_url, "http://int.cloud.example:5000");
        g2.insert(
            "kolla_internal_fqdn".into(),
            "{{ kolla_internal_vip_address }}".into(),
        );
        let a = from_globals(&g2, &fx("globals.yml"), "pw".into()).unwrap();
        assert_eq!(a.auth_url, "http://10.0.0.10:5000");
        g2.clear();
        let e = from_globals(&g2, &fx("globals.yml"), "pw".into()).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("globals.yml has no kolla_internal_fqdn or kolla_internal_vip_address"));
    }

    #[test]
    fn kolla_dir_openrc_then_globals_and_missing_files_named() {
        let d = tempfile::tempdir().unwrap();
        let e = from_kolla_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("neither admin-openrc.sh nor globals.yml"), "{e}");
        std::fs::write(
            d.path().join("globals.yml"),
            include_str!("fixtures/globals.yml"),
        )
        .unwrap();
        let e = from_kolla_dir(d.path()).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("passwords.yml"),
            "{e}"
        );
        std::fs::write(d.path().join("passwords.yml"), "database_password: x\n").unwrap();
        let e = from_kolla_dir(d.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("passwords.yml has no keystone_admin_password"),
            "{e}"
        );
        std::fs::write(
            d.path().join("passwords.yml"),
            include_str!("fixtures/passwords.yml"),
        )
        .unwrap();
        let (a, _) = from_kolla_dir(d.path()).unwrap();
        assert_eq!(a.password, "kA#pw: with 'quotes' and \"escapes\"");
        std::fs::write(
            d.path().join("admin-openrc.sh"),
            "export OS_AUTH_URL=http://ks:5000/v3\nexport OS_USERNAME=admin\n",
        )
        .unwrap();
        let (a, ca) = from_kolla_dir(d.path()).unwrap();
        assert_eq!(a.auth_url, "http://ks:5000/v3");
        assert_eq!(a.password, "kA#pw: with 'quotes' and \"escapes\"");
        assert_eq!(ca, None);
    }

    #[test]
    fn tokens_url_with_or_without_v3() {
        assert_eq!(
            tokens_url("http://ks:5000"),
            "http://ks:5000/v3/auth/tokens"
        );
        assert_eq!(
            tokens_url("http://ks:5000/v3/"),
            "http://ks:5000/v3/auth/tokens"
        );
        assert_eq!(
            tokens_url("https://ks/identity/v3"),
            "https://ks/identity/v3/auth/tokens"
        );
    }

    #[test]
    fn catalog_endpoint_by_interface_and_region() {
        let t: Value = serde_json::from_str(include_str!("fixtures/token.json")).unwrap();
        assert_eq!(
            select_endpoint(&t, "internal", Some("RegionOne")).unwrap(),
            "http://10.0.0.10:9696"
        );
        assert_eq!(
            select_endpoint(&t, "internalURL", Some("RegionTwo")).unwrap(),
            "http://10.1.0.10:9696/"
        );
        assert_eq!(
            select_endpoint(&t, "public", None).unwrap(),
            "https://cloud.example:9696"
        );
        let e = select_endpoint(&t, "internal", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("several regions (RegionOne, RegionTwo)"), "{e}");
        let e = select_endpoint(&t, "admin", Some("RegionTwo"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("interface admin in region RegionTwo"), "{e}");
        assert!(e.contains("internal@RegionTwo"), "{e}");
        let e = select_endpoint(&json!({"token": {}}), "internal", None).unwrap_err();
        assert!(e.to_string().contains("no network service"));
    }

    #[test]
    fn the_password_is_in_the_request_body_only() {
        let a = OsAuth {
            auth_url: "http://ks:5000".into(),
            username: "admin".into(),
            password: "hunter2".into(),
            project_name: "admin".into(),
            user_domain_name: "Default".into(),
            project_domain_name: "Default".into(),
            region_name: None,
            interface: "internal".into(),
        };
        let b = token_request(&a);
        assert_eq!(
            b.pointer("/auth/identity/password/user/password").unwrap(),
            "hunter2"
        );
        assert_eq!(
            b.pointer("/auth/scope/project/domain/name").unwrap(),
            "Default"
        );
        // A failed login names the URL, never the password.
        let mut http = Http::new(&api::Transport {
            timeout: std::time::Duration::from_secs(2),
            cacert: None,
            validate_certs: true,
        })
        .unwrap();
        let a = OsAuth {
            auth_url: "http://127.0.0.1:9/v3".into(),
            ..a
        };
        let e = login(&mut http, &a, true).unwrap_err().to_string();
        assert!(e.contains("POST http://127.0.0.1:9/v3/auth/tokens"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(http.secrets(), ["hunter2"]);
    }
}
