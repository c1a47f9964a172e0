//! The Ansible module runtime shared by every module (`src/modules/`, started by `src/bin/`).
//!
//! Ansible runs a binary module as `<module> <args-file>`: the file holds one JSON object with the
//! task's arguments plus `_ansible_*` control keys. The module must print exactly one JSON object.
//! This runtime owns all of that so a module is only a typed-args struct and a function:
//!
//! ```ignore
//! fn main() { numa_repin::ansible::run::<Args, _>("numa_facts", |args, ctx| { ... }) }
//! ```
//!
//! Guarantees: unknown or mistyped arguments fail with the list of accepted ones; `--schema`
//! prints the JSON Schema of the arguments; a panic or error becomes `failed: true` with a
//! message, never a backtrace; secrets named by [`ModuleArgs::secrets`] are scrubbed from the
//! whole result.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;
use std::io::Read;
use std::panic::{self, AssertUnwindSafe};

/// What a module's args type must provide besides `Deserialize` + `JsonSchema`.
pub trait ModuleArgs: DeserializeOwned + JsonSchema {
    /// Values that must never reach the output (passwords, tokens). Scrubbed from every string.
    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }
    /// Bounds on the values (counts, sizes, paths; see [`crate::limits`]), checked after typing
    /// and before the module runs. The error names the argument.
    fn validate(&self) -> Result<(), crate::limits::Error> {
        Ok(())
    }
}

/// The `_ansible_*` control keys the module honours.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub module: String,
    pub check_mode: bool,
    pub diff: bool,
}

/// A module's successful (or deliberately failed, see [`Outcome::failed`]) result.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub changed: bool,
    pub failed: bool,
    pub msg: String,
    pub fields: Map<String, Value>,
    pub facts: Option<Value>,
    /// `{before, after}` (strings or objects), or a list of them: shown by `--diff`.
    pub diff: Option<Value>,
    pub warnings: Vec<String>,
}

impl Outcome {
    pub fn new(changed: bool, msg: impl Into<String>) -> Self {
        Outcome {
            changed,
            msg: msg.into(),
            ..Default::default()
        }
    }
    /// Adds a result field; a value that fails to serialize is recorded as its error text.
    pub fn with(mut self, key: &str, value: impl serde::Serialize) -> Self {
        let v = serde_json::to_value(value)
            .unwrap_or_else(|e| Value::String(format!("<unserializable: {e}>")));
        self.fields.insert(key.to_string(), v);
        self
    }
    pub fn set(&mut self, key: &str, value: impl serde::Serialize) {
        let v = serde_json::to_value(value)
            .unwrap_or_else(|e| Value::String(format!("<unserializable: {e}>")));
        self.fields.insert(key.to_string(), v);
    }
}

/// An error that carries result fields along with its message (e.g. a fit refusal with reasons,
/// or a failed migration with its job statistics). Any other `anyhow::Error` becomes a plain
/// failure with its context chain as the message. The runtime puts the module's name in front
/// of every failure message (the library never spells it), except an [`Failure::exact`] one.
#[derive(Debug)]
pub struct Failure {
    pub msg: String,
    pub fields: Map<String, Value>,
    /// The message is a contract as it stands (Nova's `No numa available ...`): no prefix.
    pub exact: bool,
}

impl Failure {
    pub fn new(msg: impl Into<String>) -> Self {
        Failure {
            msg: msg.into(),
            fields: Map::new(),
            exact: false,
        }
    }
    /// A failure whose message is returned exactly as given.
    pub fn exact(msg: impl Into<String>) -> Self {
        Failure {
            exact: true,
            ..Failure::new(msg)
        }
    }
    pub fn with(mut self, key: &str, value: impl serde::Serialize) -> Self {
        if let Ok(v) = serde_json::to_value(value) {
            self.fields.insert(key.to_string(), v);
        }
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}
impl std::error::Error for Failure {}

/// The schema of a secret string argument (`#[schemars(schema_with = "crate::ansible::secret")]`
/// on an `Option<String>`, with `#[serde(default)]`, without which the schema would call it
/// required): a string marked `x-no-log`, which the generated docs show as `no_log: true`. The
/// module still names it in [`ModuleArgs::secrets`] to scrub it.
pub fn secret(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
    use schemars::schema::{InstanceType, SchemaObject};
    let mut o = SchemaObject {
        instance_type: Some(vec![InstanceType::String, InstanceType::Null].into()),
        ..Default::default()
    };
    o.extensions.insert("x-no-log".into(), Value::Bool(true));
    o.into()
}

/// Parse args from the JSON text Ansible wrote. Split out of [`run`] so tests can call it.
/// A whole number given as a JSON number or as a string of digits: Ansible before 2.19 hands a
/// templated value nested in a dict (`drain: {max_parallel: "{{ n }}"}`) to the module as a string.
pub fn u64_lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Text(String),
    }
    match serde::Deserialize::deserialize(d)? {
        N::Num(n) => Ok(n),
        N::Text(t) => t
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a whole number"))),
    }
}

pub fn parse_args<A: ModuleArgs>(module: &str, text: &str) -> Result<(A, Context), Failure> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Failure::new(format!(
            "{module}: the arguments are not valid JSON ({e}); Ansible passes a JSON object file"
        ))
    })?;
    let Value::Object(mut map) = value else {
        return Err(Failure::new(format!(
            "{module}: the arguments must be a JSON object"
        )));
    };
    let mut ctx = Context {
        module: module.to_string(),
        ..Default::default()
    };
    let control: Vec<String> = map
        .keys()
        .filter(|k| k.starts_with("_ansible_"))
        .cloned()
        .collect();
    for key in control {
        let v = map.remove(&key).unwrap_or(Value::Null);
        match key.as_str() {
            "_ansible_check_mode" => ctx.check_mode = v.as_bool().unwrap_or(false),
            "_ansible_diff" => ctx.diff = v.as_bool().unwrap_or(false),
            // The others (no_log, verbosity, tmpdir, version, …) do not concern a binary module:
            // the controller censors a no_log task's result; secrets are scrubbed here anyway.
            _ => {}
        }
    }
    let accepted = accepted_args::<A>();
    let mut unknown: Vec<&String> = map.keys().filter(|k| !accepted.contains(k)).collect();
    unknown.sort();
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
        return Err(Failure::new(format!(
            "{module}: unsupported argument(s): {}; accepted: {}",
            names.join(", "),
            accepted.join(", ")
        )));
    }
    let de = Value::Object(map);
    // No argument string reaches a path, a URI or a query with a NUL in it.
    crate::limits::json_no_nul(&de, "")
        .map_err(|e| Failure::new(format!("{module}: argument '{}': {}", e.field, e.kind)))?;
    let args: A = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Failure::new(format!(
                "{module}: {inner}; accepted arguments: {}",
                accepted.join(", ")
            ))
        } else {
            Failure::new(format!("{module}: argument '{path}': {inner}"))
        }
    })?;
    args.validate()
        .map_err(|e| Failure::new(format!("{module}: argument '{}': {}", e.field, e.kind)))?;
    Ok((args, ctx))
}

/// The top-level argument names, from the schema (the one source of truth for docs too).
pub fn accepted_args<A: JsonSchema>() -> Vec<String> {
    let schema = serde_json::to_value(schemars::schema_for!(A)).unwrap_or(Value::Null);
    let mut names: Vec<String> = schema
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Build the single result object (scrubbing secrets) from a module function's return.
pub fn render(
    ctx: &Context,
    result: Result<Outcome, anyhow::Error>,
    secrets: &[String],
) -> (Value, i32) {
    let mut out = Map::new();
    let code = match result {
        Ok(o) => {
            out.insert("changed".into(), Value::Bool(o.changed));
            out.insert("failed".into(), Value::Bool(o.failed));
            out.insert("msg".into(), Value::String(o.msg));
            for (k, v) in o.fields {
                out.insert(k, v);
            }
            if let Some(f) = o.facts {
                out.insert("ansible_facts".into(), f);
            }
            if let Some(d) = o.diff {
                if ctx.diff {
                    out.insert("diff".into(), d);
                }
            }
            if !o.warnings.is_empty() {
                out.insert("warnings".into(), serde_json::json!(o.warnings));
            }
            if o.failed {
                1
            } else {
                0
            }
        }
        Err(e) => {
            out.insert("changed".into(), Value::Bool(false));
            out.insert("failed".into(), Value::Bool(true));
            let prefix = format!("{}: ", ctx.module);
            let named = |m: String| match m.starts_with(&prefix) || ctx.module.is_empty() {
                true => m,
                false => format!("{prefix}{m}"),
            };
            if let Some(f) = e.downcast_ref::<Failure>() {
                let msg = if f.exact {
                    f.msg.clone()
                } else {
                    named(f.msg.clone())
                };
                out.insert("msg".into(), Value::String(msg));
                for (k, v) in &f.fields {
                    out.insert(k.clone(), v.clone());
                }
            } else {
                // "{:#}" prints the context chain on one line: "outer: inner: root cause".
                out.insert("msg".into(), Value::String(named(format!("{e:#}"))));
            }
            1
        }
    };
    if ctx.check_mode {
        out.insert("check_mode".into(), Value::Bool(true));
    }
    let mut v = Value::Object(out);
    scrub(&mut v, secrets);
    (v, code)
}

fn scrub(v: &mut Value, secrets: &[String]) {
    match v {
        Value::String(s) => {
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), "********");
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| scrub(x, secrets)),
        Value::Object(m) => m.values_mut().for_each(|x| scrub(x, secrets)),
        _ => {}
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// The whole `main` of a module binary `src/bin/<module>.rs`: runs `modules::<module>::run`
/// with its `Args`, under the binary's own name (messages and `--schema` use it).
#[macro_export]
macro_rules! module_main {
    ($module:ident) => {
        fn main() {
            $crate::ansible::run::<$crate::modules::$module::Args, _>(
                env!("CARGO_BIN_NAME"),
                $crate::modules::$module::run,
            )
        }
    };
}

/// Entry point of every module binary. Never returns.
pub fn run<A, F>(module: &str, body: F) -> !
where
    A: ModuleArgs,
    F: FnOnce(A, &Context) -> anyhow::Result<Outcome>,
{
    // No backtrace or panic text on stderr: the panic becomes a result below.
    panic::set_hook(Box::new(|_| {}));
    let argv: Vec<String> = std::env::args().collect();
    let mut ctx = Context {
        module: module.to_string(),
        ..Default::default()
    };
    if argv.iter().any(|a| a == "--schema") {
        let schema = schemars::schema_for!(A);
        println!(
            "{}",
            serde_json::to_string_pretty(&schema).unwrap_or_default()
        );
        std::process::exit(0);
    }
    let text = match argv.get(1).map(String::as_str) {
        None => Err(format!(
            "{module}: no arguments file given; run as '{module} <args.json>' (Ansible does this) or '{module} --schema'"
        )),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().take(crate::limits::MAX_ARGS_BYTES + 1).read_to_string(&mut s).map_err(|e| format!("{module}: cannot read stdin: {e}")).and_then(|n| {
                if n as u64 > crate::limits::MAX_ARGS_BYTES {
                    Err(format!("{module}: the arguments on stdin are more than the {} bytes accepted", crate::limits::MAX_ARGS_BYTES))
                } else {
                    Ok(s)
                }
            })
        }
        Some(path) => crate::limits::read_text("arguments file", std::path::Path::new(path), crate::limits::MAX_ARGS_BYTES).map_err(|e| format!("{module}: {e} ({path})")),
    };
    let mut secrets = Vec::new();
    let result = match text {
        Err(msg) => Err(anyhow::Error::new(Failure::new(msg))),
        Ok(text) => match parse_args::<A>(module, &text) {
            Err(f) => Err(anyhow::Error::new(f)),
            Ok((args, c)) => {
                ctx = c;
                secrets = args.secrets();
                let ctx_ref = &ctx;
                match panic::catch_unwind(AssertUnwindSafe(move || body(args, ctx_ref))) {
                    Ok(r) => r,
                    Err(p) => Err(anyhow::anyhow!(
                        "{module}: internal error ({}); nothing further was attempted, please report this with the task's arguments",
                        panic_text(p.as_ref())
                    )),
                }
            }
        },
    };
    let (value, code) = render(&ctx, result, &secrets);
    println!(
        "{}",
        serde_json::to_string(&value)
            .unwrap_or_else(|_| "{\"failed\":true,\"msg\":\"cannot serialize result\"}".into())
    );
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema, Debug)]
    #[serde(deny_unknown_fields)]
    struct A {
        uri: String,
        #[serde(default)]
        count: u32,
        password: Option<String>,
    }
    impl ModuleArgs for A {
        fn secrets(&self) -> Vec<String> {
            self.password.clone().into_iter().collect()
        }
    }

    #[test]
    fn control_keys_are_split_off() {
        let (a, c) = parse_args::<A>(
            "m",
            r#"{"uri":"x","_ansible_check_mode":true,"_ansible_diff":true,"_ansible_tmpdir":"/t"}"#,
        )
        .unwrap();
        assert_eq!((a.uri.as_str(), a.count), ("x", 0));
        assert!(c.check_mode && c.diff);
    }

    #[test]
    fn unknown_args_list_the_accepted_ones() {
        let e = parse_args::<A>("m", r#"{"uri":"x","urk":1}"#).unwrap_err();
        assert!(e.msg.contains("unsupported argument(s): urk"), "{}", e.msg);
        assert!(
            e.msg.contains("accepted: count, password, uri"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn wrong_types_name_the_argument() {
        let e = parse_args::<A>("m", r#"{"uri":"x","count":"many"}"#).unwrap_err();
        assert!(e.msg.contains("argument 'count'"), "{}", e.msg);
        let e = parse_args::<A>("m", r#"{"count":1}"#).unwrap_err();
        assert!(e.msg.contains("missing field `uri`"), "{}", e.msg);
    }

    #[test]
    fn nul_bytes_are_refused_in_any_argument() {
        let e = parse_args::<A>("m", r#"{"uri":"qemu:///sys\u0000tem"}"#).unwrap_err();
        assert_eq!(e.msg, "m: argument 'uri': contains a NUL byte");
    }

    #[derive(Deserialize, JsonSchema, Debug)]
    struct B {
        n: u64,
    }
    impl ModuleArgs for B {
        fn validate(&self) -> Result<(), crate::limits::Error> {
            crate::limits::at_most("n", self.n, 10, "things").map(|_| ())
        }
    }

    #[test]
    fn validate_runs_after_typing_and_names_the_argument() {
        assert!(parse_args::<B>("m", r#"{"n": 10}"#).is_ok());
        let e = parse_args::<B>("m", r#"{"n": 11}"#).unwrap_err();
        assert_eq!(
            e.msg,
            "m: argument 'n': 11 things is more than the 10 accepted"
        );
    }

    #[test]
    fn malformed_json_and_non_objects_fail_clearly() {
        assert!(parse_args::<A>("m", "{not json")
            .unwrap_err()
            .msg
            .contains("not valid JSON"));
        assert!(parse_args::<A>("m", "[1]")
            .unwrap_err()
            .msg
            .contains("must be a JSON object"));
    }

    #[test]
    fn secrets_are_scrubbed_everywhere() {
        let ctx = Context::default();
        let err = anyhow::anyhow!("cannot connect to mysql://nova:s3cret@db/nova");
        let (v, code) = render(&ctx, Err(err), &["s3cret".to_string()]);
        assert_eq!(code, 1);
        assert!(!v.to_string().contains("s3cret"));
        assert!(v["msg"].as_str().unwrap().contains("nova:********@db"));
    }

    #[test]
    fn numbers_may_come_as_strings_where_ansible_leaves_them_so() {
        #[derive(serde::Deserialize)]
        struct A {
            #[serde(deserialize_with = "u64_lenient")]
            n: u64,
        }
        let a: A = serde_json::from_str(r#"{"n": "2"}"#).unwrap();
        assert_eq!(a.n, 2);
        let a: A = serde_json::from_str(r#"{"n": 3}"#).unwrap();
        assert_eq!(a.n, 3);
        let e = serde_json::from_str::<A>(r#"{"n": "two"}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a whole number"), "{e}");
        assert!(serde_json::from_str::<A>(r#"{"n": -1}"#).is_err());
    }

    #[test]
    fn failure_fields_are_kept_and_diff_only_when_asked() {
        let ctx = Context {
            diff: false,
            ..Default::default()
        };
        let o = Outcome {
            diff: Some(serde_json::json!({"before": "a", "after": "b"})),
            ..Outcome::new(true, "ok")
        };
        let (v, code) = render(&ctx, Ok(o), &[]);
        assert_eq!(code, 0);
        assert!(v.get("diff").is_none());
        let e = anyhow::Error::new(Failure::new("nope").with("reasons", vec!["cell 0"]));
        let (v, _) = render(&ctx, Err(e), &[]);
        assert_eq!(v["reasons"][0], "cell 0");
        assert_eq!(v["failed"], true);
    }
}
