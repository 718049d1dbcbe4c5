//! Property-based fuzzing of everything jobwarden parses from text it does not control: the
//! TOML configuration, duration strings and per-job annotation sets.
//!
//! Cases per property: `PROPTEST_CASES` (or `JOBWARDEN_PROPTEST_CASES`), default small enough
//! for CI (about a second). A long run:
//! `PROPTEST_CASES=500000 cargo test --release -p jobwarden --test fuzz_parsers --test fuzz_api`.
//!
//! Properties:
//! - arbitrary text and TOML-shaped text: `Config::parse` never panics, and every error names
//!   the file;
//! - generated configurations (random subsets of the real keys, random sections, random values
//!   of every type): never a panic; an error names the file and a key or section present;
//! - a valid generated configuration with exactly one fault injected (unknown key, wrong type,
//!   malformed duration, or a value validation rejects) is rejected and the error names that
//!   key; without the fault it is accepted;
//! - durations: never a panic; `parse(format(d)) == d`; sums of unit parts; errors quote the
//!   input; nothing above the maximum is accepted;
//! - annotation sets (random keys around the real ones, random values, labels): never a panic;
//!   every recognised annotation is used or warned about (naming the job, key and value);
//!   labels win over annotations; the effective timeout never exceeds the organisation's
//!   maximum or the platform's (the README's Concepts: a job never exceeds its
//!   organisation's maximum).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use jobwarden::config::{Config, PolicyConfig};
use jobwarden::duration::{Dur, MAX_SECONDS, format_duration, parse_duration};
use jobwarden::policy::{AnnotationKeys, resolve, settings_from_annotations};
use proptest::prelude::*;

const FILE: &str = "fuzz/jobwarden.toml";

fn cfg(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: common::proptest_cases(default),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// TOML values and documents

/// A TOML value, rendered inline.
#[derive(Debug, Clone)]
enum V {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Arr(Vec<V>),
    Table(Vec<(String, V)>),
}

impl V {
    fn render(&self, out: &mut String) {
        match self {
            V::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if c.is_control() => {
                            let _ = write!(out, "\\u{:04X}", u32::from(c));
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            V::Int(i) => {
                let _ = write!(out, "{i}");
            }
            V::Float(f) => {
                if f.is_finite() {
                    let _ = write!(out, "{f:?}");
                } else if f.is_nan() {
                    out.push_str("nan");
                } else if *f > 0.0 {
                    out.push_str("inf");
                } else {
                    out.push_str("-inf");
                }
            }
            V::Bool(b) => {
                let _ = write!(out, "{b}");
            }
            V::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.render(out);
                }
                out.push(']');
            }
            V::Table(kv) => {
                out.push('{');
                for (i, (k, v)) in kv.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{} = ", key(k));
                    v.render(out);
                }
                out.push('}');
            }
        }
    }
}

/// A key, quoted when it is not a bare key.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        let mut s = String::new();
        V::Str(k.to_owned()).render(&mut s);
        s
    }
}

fn any_value() -> impl Strategy<Value = V> {
    let leaf = prop_oneof![
        3 => duration_text().prop_map(V::Str),
        2 => "\\PC{0,12}".prop_map(V::Str),
        2 => any::<i64>().prop_map(V::Int),
        2 => (-5i64..100_000).prop_map(V::Int),
        1 => any::<f64>().prop_map(V::Float),
        1 => any::<bool>().prop_map(V::Bool),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(V::Arr),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(V::Table),
        ]
    })
}

/// Text that is often a valid duration and often almost one.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        (0u64..1000, "[smhdw]").prop_map(|(n, u)| format!("{n}{u}")),
        (0u64..100, 0u64..100).prop_map(|(h, m)| format!("{h}h{m}m")),
        "[0-9smhdwy.+ -]{0,10}",
        Just(String::new()),
        Just("99999999999999999999".to_owned()),
    ]
}

/// How a known key's valid values are generated, and which value validation rejects.
#[derive(Debug, Clone, Copy)]
enum Ty {
    /// A duration in `[lo, hi]` seconds; `zero_bad`: `"0s"` is rejected.
    Dur(u64, u64, Option<&'static str>),
    /// An integer in `[lo, hi]`; the rejected value, if any.
    Int(i64, i64, Option<i64>),
    Float(f64, f64, Option<f64>),
    Bool,
    /// One of these strings; the rejected value, if any.
    Str(&'static [&'static str], Option<&'static str>),
    /// `warn_before`: a duration or a list of them; `[]` is rejected.
    WarnBefore,
}

/// Every plain key of the configuration (maps, hooks and artifacts are generated separately),
/// with valid ranges that keep the cross-key rules (global_default <= hard_max, grace <=
/// grace_max, backoff_initial <= backoff_max) satisfied.
const KEYS: &[(&str, &str, Ty)] = &[
    (
        "server",
        "listen",
        Ty::Str(&["127.0.0.1:7800", "127.0.0.1:0", "[::1]:9000"], None),
    ),
    ("policy", "global_default", Ty::Dur(1, 7200, Some("0s"))),
    ("policy", "grace_period", Ty::Dur(0, 1800, Some("3h"))),
    ("policy", "grace_max", Ty::Dur(3600, 7200, None)),
    ("policy", "hard_max", Ty::Dur(86_400, 2_592_000, Some("0s"))),
    ("policy", "warn_before", Ty::WarnBefore),
    ("policy", "startup_timeout", Ty::Dur(1, 3600, Some("0s"))),
    ("retention", "successful", Ty::Dur(0, 2_592_000, None)),
    ("retention", "failed", Ty::Dur(0, 2_592_000, None)),
    ("retention", "terminated", Ty::Dur(0, 2_592_000, None)),
    ("retention.artifacts", "logs", Ty::Dur(0, 2_592_000, None)),
    (
        "retention.artifacts",
        "partial",
        Ty::Dur(0, 2_592_000, None),
    ),
    (
        "retention.artifacts",
        "artifacts",
        Ty::Dur(0, 2_592_000, None),
    ),
    ("orphans", "local_min_age", Ty::Dur(0, 86_400, None)),
    ("orphans", "artifact_min_age", Ty::Dur(0, 2_592_000, None)),
    ("orphans", "scan_interval", Ty::Dur(1, 86_400, Some("0s"))),
    ("orphans", "clean", Ty::Bool),
    (
        "safety",
        "max_deletions_per_minute",
        Ty::Int(1, 100_000, Some(0)),
    ),
    ("safety", "max_batch", Ty::Int(1, 10_000, Some(0))),
    ("recovery", "max_attempts", Ty::Int(0, 10, None)),
    ("recovery", "backoff_initial", Ty::Dur(1, 60, None)),
    (
        "recovery",
        "backoff_multiplier",
        Ty::Float(1.0, 4.0, Some(0.5)),
    ),
    ("recovery", "backoff_max", Ty::Dur(3600, 7200, None)),
    ("queue", "workers", Ty::Int(1, 16, Some(0))),
    ("queue", "lease", Ty::Dur(1, 600, Some("0s"))),
    ("queue", "max_attempts", Ty::Int(1, 20, Some(0))),
    ("queue", "backoff_initial", Ty::Dur(1, 60, None)),
    ("queue", "backoff_max", Ty::Dur(3600, 7200, None)),
    (
        "annotations",
        "prefix",
        Ty::Str(&["flowforge.io/", "example.com/jw-", "x/"], Some("")),
    ),
];

/// `(table, entry key)` pairs whose values are durations: `policy.organization_max.<org>`, …
const MAPS: &[(&str, Ty)] = &[
    ("policy.organization_max", Ty::Dur(1, 86_400, Some("0s"))),
    ("policy.job_type_overrides", Ty::Dur(1, 86_400, Some("0s"))),
    ("policy.job_type_grace", Ty::Dur(0, 1800, Some("3h"))),
];

const HOOK_EVENTS: &[&str] = &[
    "pre_start",
    "running",
    "completing",
    "completed",
    "failed",
    "terminating",
    "cleanup",
    "cleaned",
    "warn",
    "soft_kill",
    "hard_kill",
    "force_delete",
];

fn valid_value(ty: Ty) -> BoxedStrategy<V> {
    match ty {
        Ty::Dur(lo, hi, _) => (lo..=hi)
            .prop_flat_map(|s| {
                prop_oneof![
                    Just(V::Int(i64::try_from(s).unwrap_or(i64::MAX))),
                    Just(V::Str(s.to_string())),
                    Just(V::Str(format_duration(Duration::from_secs(s)))),
                ]
            })
            .boxed(),
        Ty::Int(lo, hi, _) => (lo..=hi).prop_map(V::Int).boxed(),
        Ty::Float(lo, hi, _) => (lo..=hi).prop_map(V::Float).boxed(),
        Ty::Bool => any::<bool>().prop_map(V::Bool).boxed(),
        Ty::Str(choices, _) => prop::sample::select(choices)
            .prop_map(|s| V::Str(s.to_owned()))
            .boxed(),
        Ty::WarnBefore => prop_oneof![
            (0u64..3600).prop_map(|s| V::Str(format_duration(Duration::from_secs(s)))),
            prop::collection::vec(0u64..3600, 1..4).prop_map(|v| V::Arr(
                v.into_iter()
                    .map(|s| V::Int(i64::try_from(s).unwrap_or(0)))
                    .collect()
            )),
        ]
        .boxed(),
    }
}

/// A value validation rejects for `ty` (parses fine), if there is one.
fn rejected_value(ty: Ty) -> Option<V> {
    match ty {
        Ty::Dur(_, _, Some(s)) => Some(V::Str(s.to_owned())),
        Ty::Int(_, _, Some(i)) => Some(V::Int(i)),
        Ty::Float(_, _, Some(f)) => Some(V::Float(f)),
        Ty::Str(_, Some(s)) => Some(V::Str(s.to_owned())),
        Ty::WarnBefore => Some(V::Arr(vec![])),
        _ => None,
    }
}

/// A value of the wrong type for `ty` (serde rejects it while parsing).
fn wrong_type(ty: Ty, pick: usize) -> V {
    let options: Vec<V> = match ty {
        Ty::Dur(..) | Ty::WarnBefore => {
            vec![V::Bool(true), V::Float(1.5), V::Table(vec![]), V::Int(-1)]
        }
        Ty::Int(..) => vec![
            V::Str("many".into()),
            V::Int(-1),
            V::Bool(false),
            V::Float(2.5),
        ],
        Ty::Float(..) => vec![V::Str("fast".into()), V::Bool(true), V::Arr(vec![])],
        Ty::Bool => vec![V::Str("yes".into()), V::Int(1)],
        Ty::Str(..) => vec![V::Int(5), V::Bool(true), V::Arr(vec![V::Int(1)])],
    };
    options[pick % options.len()].clone()
}

/// A malformed duration string.
fn bad_duration(pick: usize) -> V {
    const BAD: &[&str] = &[
        "5x",
        "-1m",
        "1.5h",
        "",
        "1h 30m",
        "h",
        "10ms",
        "99999999999999999999",
    ];
    V::Str(BAD[pick % BAD.len()].to_owned())
}

/// A generated document: `(table, key, value)` entries plus `[[hooks]]` blocks.
#[derive(Debug, Clone, Default)]
struct Doc {
    entries: Vec<(String, String, V)>,
    hooks: Vec<Vec<(String, V)>>,
}

impl Doc {
    fn render(&self) -> String {
        let mut tables: BTreeMap<&str, Vec<(&str, &V)>> = BTreeMap::new();
        for (t, k, v) in &self.entries {
            tables.entry(t.as_str()).or_default().push((k.as_str(), v));
        }
        let mut out = String::new();
        for (t, kvs) in &tables {
            let _ = writeln!(out, "[{t}]");
            for (k, v) in kvs {
                let _ = write!(out, "{} = ", key(k));
                v.render(&mut out);
                out.push('\n');
            }
            out.push('\n');
        }
        for h in &self.hooks {
            out.push_str("[[hooks]]\n");
            for (k, v) in h {
                let _ = write!(out, "{k} = ");
                v.render(&mut out);
                out.push('\n');
            }
            out.push('\n');
        }
        out
    }

    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .entries
            .iter()
            .flat_map(|(t, k, _)| [t.clone(), k.clone()])
            .collect();
        for h in &self.hooks {
            keys.extend(h.iter().map(|(k, _)| k.clone()));
        }
        keys.push("hooks".into());
        keys
    }
}

fn valid_hook() -> impl Strategy<Value = Vec<(String, V)>> {
    (
        prop::sample::select(HOOK_EVENTS),
        any::<bool>(),
        proptest::option::of(1u64..60),
        proptest::option::of(0i64..5),
    )
        .prop_map(|(on, webhook, timeout, retries)| {
            let mut h = vec![("on".to_owned(), V::Str(on.to_owned()))];
            if webhook {
                h.push(("webhook".into(), V::Str("http://127.0.0.1:9/hook".into())));
            } else {
                h.push((
                    "command".into(),
                    V::Arr(vec![V::Str("/bin/true".into()), V::Str("x".into())]),
                ));
            }
            if let Some(t) = timeout {
                h.push(("timeout".into(), V::Str(format!("{t}s"))));
            }
            if let Some(r) = retries {
                h.push(("retries".into(), V::Int(r)));
            }
            h
        })
}

/// A valid document: a random subset of the keys, map entries and hooks, with valid values.
fn valid_doc() -> impl Strategy<Value = Doc> {
    let plain = KEYS
        .iter()
        .map(|&(t, k, ty)| {
            proptest::option::weighted(0.4, valid_value(ty))
                .prop_map(move |v| v.map(|v| (t.to_owned(), k.to_owned(), v)))
        })
        .collect::<Vec<_>>();
    let maps = MAPS
        .iter()
        .map(|&(t, ty)| {
            prop::collection::btree_map("[a-z]([a-z0-9-]{0,5}[a-z0-9])?", valid_value(ty), 0..3)
                .prop_map(move |m| {
                    m.into_iter()
                        .map(|(k, v)| (t.to_owned(), k, v))
                        .collect::<Vec<_>>()
                })
        })
        .collect::<Vec<_>>();
    let artifacts = prop_oneof![
        Just(vec![]),
        Just(vec![(
            "artifacts".to_owned(),
            "url".to_owned(),
            V::Str("file:///tmp/jw-fuzz".into())
        )]),
        Just(vec![
            (
                "artifacts".to_owned(),
                "url".to_owned(),
                V::Str("s3://bucket/prefix".into())
            ),
            (
                "artifacts".to_owned(),
                "region".to_owned(),
                V::Str("eu-west-1".into())
            ),
        ]),
    ];
    (
        plain,
        maps,
        artifacts,
        prop::collection::vec(valid_hook(), 0..3),
    )
        .prop_map(|(plain, maps, artifacts, hooks)| Doc {
            entries: plain
                .into_iter()
                .flatten()
                .chain(maps.into_iter().flatten())
                .chain(artifacts)
                .collect(),
            hooks,
        })
}

/// One fault to inject, and the text the error must contain.
#[derive(Debug, Clone)]
enum Fault {
    /// An unknown key in a known table (or in a hook).
    Unknown { table: usize, name: String },
    /// A known key with a value of the wrong type.
    WrongType { key: usize, pick: usize },
    /// A duration key with a malformed string.
    BadDuration { key: usize, pick: usize },
    /// A value that parses but validation rejects.
    Rejected { key: usize },
    /// A map entry validation rejects.
    RejectedEntry { map: usize, name: String },
    /// A hook with an unknown event, a bad webhook URL or a zero timeout.
    BadHook { which: usize },
    /// An artifacts URL that is not one.
    BadArtifactsUrl,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0..TABLES.len(), "zz_[a-z]{1,8}").prop_map(|(table, name)| Fault::Unknown { table, name }),
        (0..KEYS.len(), 0usize..8).prop_map(|(key, pick)| Fault::WrongType { key, pick }),
        (0..KEYS.len(), 0usize..8).prop_map(|(key, pick)| Fault::BadDuration { key, pick }),
        (0..KEYS.len()).prop_map(|key| Fault::Rejected { key }),
        (0..MAPS.len(), "[a-z][a-z0-9]{0,5}")
            .prop_map(|(map, name)| Fault::RejectedEntry { map, name }),
        (0usize..3).prop_map(|which| Fault::BadHook { which }),
        Just(Fault::BadArtifactsUrl),
    ]
}

const TABLES: &[&str] = &[
    "server",
    "store",
    "policy",
    "retention",
    "retention.artifacts",
    "orphans",
    "safety",
    "recovery",
    "queue",
    "annotations",
    "artifacts",
];

/// Applies `fault` to `doc`; returns the text the error must contain, or None when the fault
/// does not apply to this key (e.g. a rejected value for a key that has none).
fn inject(doc: &mut Doc, fault: &Fault) -> Option<String> {
    fn set(doc: &mut Doc, t: &str, k: &str, v: V) {
        doc.entries.retain(|(et, ek, _)| !(et == t && ek == k));
        doc.entries.push((t.to_owned(), k.to_owned(), v));
    }
    match fault {
        Fault::Unknown { table, name } => {
            set(doc, TABLES[*table], name, V::Int(1));
            Some(name.clone())
        }
        Fault::WrongType { key, pick } => {
            let (t, k, ty) = KEYS[*key];
            // `-1` is not a wrong type for a signed value; every other pick is.
            let v = wrong_type(ty, *pick);
            set(doc, t, k, v);
            Some(k.to_owned())
        }
        Fault::BadDuration { key, pick } => {
            let (t, k, ty) = KEYS[*key];
            if !matches!(ty, Ty::Dur(..) | Ty::WarnBefore) {
                return None;
            }
            set(doc, t, k, bad_duration(*pick));
            Some(k.to_owned())
        }
        Fault::Rejected { key } => {
            let (t, k, ty) = KEYS[*key];
            let v = rejected_value(ty)?;
            set(doc, t, k, v);
            Some(format!("{t}.{k}"))
        }
        Fault::RejectedEntry { map, name } => {
            let (t, ty) = MAPS[*map];
            let v = rejected_value(ty)?;
            set(doc, t, name, v);
            Some(format!("{t}.{name}"))
        }
        Fault::BadHook { which } => {
            let i = doc.hooks.len();
            let (hook, expect) = match which {
                0 => (
                    vec![
                        ("on".to_owned(), V::Str("teminating".into())),
                        (
                            "command".to_owned(),
                            V::Arr(vec![V::Str("/bin/true".into())]),
                        ),
                    ],
                    format!("hooks[{i}].on"),
                ),
                1 => (
                    vec![
                        ("on".to_owned(), V::Str("warn".into())),
                        ("webhook".to_owned(), V::Str("ftp://x".into())),
                    ],
                    format!("hooks[{i}].webhook"),
                ),
                _ => (
                    vec![
                        ("on".to_owned(), V::Str("warn".into())),
                        (
                            "command".to_owned(),
                            V::Arr(vec![V::Str("/bin/true".into())]),
                        ),
                        ("timeout".to_owned(), V::Str("0s".into())),
                    ],
                    format!("hooks[{i}].timeout"),
                ),
            };
            doc.hooks.push(hook);
            Some(expect)
        }
        Fault::BadArtifactsUrl => {
            doc.entries.retain(|(t, _, _)| t != "artifacts");
            set(
                doc,
                "artifacts",
                "url",
                V::Str("ftp://example.com/x".into()),
            );
            Some("artifacts.url".into())
        }
    }
}

proptest! {
    #![proptest_config(cfg(512))]

    #[test]
    fn config_arbitrary_text_never_panics(text in "\\PC{0,300}") {
        if let Err(e) = Config::parse(&text, FILE) {
            prop_assert!(e.to_string().starts_with(FILE), "{e}");
        }
    }

    #[test]
    fn config_toml_shaped_text_never_panics(
        text in "(\\[{1,2}[a-z_.]{0,12}\\]{1,2}\n|[a-z_]{1,16} ?= ?[\\[\\]{}\"'0-9a-z., _=-]{0,20}\n|#[^\n]{0,10}\n){0,12}",
    ) {
        if let Err(e) = Config::parse(&text, FILE) {
            prop_assert!(e.to_string().starts_with(FILE), "{e}");
        }
    }

    #[test]
    fn config_random_structure_never_panics(
        entries in prop::collection::vec(
            (
                prop_oneof![prop::sample::select(TABLES).prop_map(str::to_owned), "[a-z]{1,6}"],
                prop_oneof![
                    prop::sample::select(KEYS).prop_map(|(_, k, _)| k.to_owned()),
                    "[a-z_]{1,12}",
                ],
                any_value(),
            ),
            0..10,
        ),
        hooks in prop::collection::vec(
            prop::collection::vec(
                (prop::sample::select(&["on", "webhook", "command", "timeout", "retries", "x"][..]), any_value())
                    .prop_map(|(k, v)| (k.to_owned(), v)),
                0..4,
            ),
            0..2,
        ),
    ) {
        // Duplicate keys are a TOML error of their own; keep one entry per key.
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|(t, k, _)| seen.insert((t.clone(), k.clone())))
            .collect();
        let hooks: Vec<Vec<(String, V)>> = hooks
            .into_iter()
            .map(|h| {
                let mut seen = std::collections::HashSet::new();
                h.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect()
            })
            .collect();
        let doc = Doc { entries, hooks };
        let text = doc.render();
        match Config::parse(&text, FILE) {
            Ok(c) => prop_assert!(c.validate(FILE).is_ok()),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.starts_with(FILE), "{msg}");
                prop_assert!(
                    doc.keys().iter().any(|k| msg.contains(k.as_str())),
                    "the error names no key or table of the document:\n{msg}\n---\n{text}"
                );
            }
        }
    }

    #[test]
    fn config_valid_documents_are_accepted(doc in valid_doc()) {
        let text = doc.render();
        let parsed = Config::parse(&text, FILE);
        prop_assert!(parsed.is_ok(), "{}\n---\n{text}", parsed.err().map(|e| e.to_string()).unwrap_or_default());
        // What was written is what was read, for a few keys.
        let c = parsed.expect("checked");
        for (t, k, v) in &doc.entries {
            match (t.as_str(), k.as_str(), v) {
                ("queue", "workers", V::Int(n)) => prop_assert_eq!(i64::from(c.queue.workers), *n),
                ("orphans", "clean", V::Bool(b)) => prop_assert_eq!(c.orphans.clean, *b),
                ("policy", "global_default", V::Int(n)) => {
                    prop_assert_eq!(i64::try_from(c.policy.global_default.as_secs()).ok(), Some(*n));
                }
                _ => {}
            }
        }
        prop_assert_eq!(c.hooks.len(), doc.hooks.len());
    }

    #[test]
    fn config_one_fault_is_reported_by_key(doc in valid_doc(), fault in fault()) {
        let mut doc = doc;
        let Some(expect) = inject(&mut doc, &fault) else {
            return Ok(());
        };
        let text = doc.render();
        match Config::parse(&text, FILE) {
            Ok(_) => prop_assert!(false, "accepted with {fault:?}:\n{text}"),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.starts_with(FILE), "{msg}");
                prop_assert!(
                    msg.contains(&expect),
                    "{fault:?}: the error does not name {expect:?}:\n{msg}\n---\n{text}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durations

proptest! {
    #![proptest_config(cfg(2048))]

    #[test]
    fn duration_never_panics_and_quotes_the_input(s in "\\PC{0,40}") {
        match parse_duration(&s) {
            Ok(d) => prop_assert!(d.as_secs() <= MAX_SECONDS),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(&format!("{s:?}")), "{msg}");
                prop_assert_eq!(e.input, s);
            }
        }
    }

    #[test]
    fn duration_like_text_is_bounded(s in "[0-9smhdwy.,+ -]{0,30}") {
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d.as_secs() <= MAX_SECONDS, "{s:?} -> {d:?}");
        }
    }

    #[test]
    fn duration_format_round_trips(secs in 0..=MAX_SECONDS) {
        let d = Duration::from_secs(secs);
        let text = format_duration(d);
        prop_assert_eq!(parse_duration(&text), Ok(d), "{}", text);
        // Plain seconds and the serde form agree.
        prop_assert_eq!(parse_duration(&secs.to_string()), Ok(d));
        let via_serde: Dur = serde_json::from_value(serde_json::json!(text)).expect("serde");
        prop_assert_eq!(via_serde.0, d);
    }

    #[test]
    fn duration_parts_add_up(parts in prop::collection::vec((0u64..1_000_000, "[smhdw]"), 1..6)) {
        let text: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
        let unit = |u: &str| match u {
            "s" => 1u64,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => 604_800,
        };
        // Each unit at most once, largest first (the grammar shared with jobwarden-init).
        let ordered = parts.windows(2).all(|w| unit(&w[0].1) > unit(&w[1].1));
        let total = parts
            .iter()
            .try_fold(0u64, |acc, (n, u)| n.checked_mul(unit(u)).and_then(|v| acc.checked_add(v)));
        match (ordered, total, parse_duration(&text)) {
            (false, _, r) => prop_assert!(r.is_err(), "{text}: a repeated or out-of-order unit accepted"),
            (true, Some(t), Ok(d)) => prop_assert_eq!(d.as_secs(), t, "{}", text),
            (true, Some(t), Err(e)) => prop_assert!(t > MAX_SECONDS, "{text} rejected: {e}"),
            (true, None, r) => prop_assert!(r.is_err(), "{text}: overflow accepted: {r:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Annotation sets

fn annotation_key(keys: &AnnotationKeys) -> impl Strategy<Value = String> {
    let known = vec![
        keys.timeout.clone(),
        keys.grace.clone(),
        keys.ttl.clone(),
        keys.heartbeat_timeout.clone(),
        keys.org.clone(),
        keys.job_type.clone(),
    ];
    prop_oneof![
        3 => prop::sample::select(known),
        1 => "[a-z./-]{0,30}",
        1 => "\\PC{0,20}",
        1 => prop::sample::select(vec![
            "flowforge.io/Timeout-Seconds".to_owned(),
            "flowforge.io/timeout-seconds ".to_owned(),
            "other.io/timeout-seconds".to_owned(),
        ]),
    ]
}

fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![duration_text(), "\\PC{0,16}", Just("0".to_owned())]
}

proptest! {
    #![proptest_config(cfg(1024))]

    #[test]
    fn annotation_sets_are_used_or_warned_and_capped(
        prefix in prop::sample::select(vec!["flowforge.io/", "example.com/jw-"]),
        ann in prop::collection::btree_map(annotation_key(&AnnotationKeys::new("flowforge.io/")), annotation_value(), 0..8),
        labels in prop::collection::btree_map(
            prop::sample::select(vec!["flowforge.io/organization-id".to_owned(), "flowforge.io/job-type".to_owned(), "app".to_owned()]),
            "[a-z0-9-]{0,8}",
            0..3,
        ),
        org_max in proptest::option::of(1u64..100_000),
        hard in 1u64..1_000_000,
        global in 1u64..1_000_000,
    ) {
        let keys = AnnotationKeys::new(prefix);
        let (s, warnings) = settings_from_annotations("ns/job-1", &ann, &labels, &keys);
        // Every recognised duration annotation is either used or warned about, never both,
        // never silently dropped; a warning names the job, the key and the value.
        let checks = [
            (&keys.timeout, s.timeout.is_some()),
            (&keys.grace, s.grace.is_some()),
            (&keys.ttl, s.ttl.is_some()),
            (&keys.heartbeat_timeout, s.heartbeat_timeout.is_some()),
        ];
        for (k, used) in checks {
            let warned: Vec<_> = warnings.iter().filter(|w| &w.key == k).collect();
            match ann.get(k) {
                Some(v) => {
                    prop_assert!(used == warned.is_empty(), "{k}={v:?}: used {used}, warnings {warned:?}");
                    for w in &warned {
                        prop_assert_eq!(&w.job, "ns/job-1");
                        prop_assert_eq!(&w.value, v);
                    }
                }
                None => prop_assert!(!used && warned.is_empty(), "{k} absent but used/warned"),
            }
        }
        prop_assert!(warnings.len() <= 6);
        // Labels win over annotations for the organisation and the job type (a label that is
        // present wins even when empty, and an empty value means none); a value that breaks
        // the naming rule is dropped with a warning naming the key and the value.
        for (k, got) in [(&keys.org, &s.org), (&keys.job_type, &s.job_type)] {
            let given = labels.get(k).or_else(|| ann.get(k)).filter(|v| !v.is_empty());
            let warned: Vec<_> = warnings.iter().filter(|w| &w.key == k).collect();
            match given {
                Some(v) if jobwarden::model::name_problem(v).is_none() => {
                    prop_assert_eq!(got.as_ref(), Some(v));
                    prop_assert!(warned.is_empty(), "{warned:?}");
                }
                Some(v) => {
                    prop_assert_eq!(got, &None);
                    prop_assert!(warned.len() == 1 && &warned[0].value == v, "{warned:?}");
                }
                None => prop_assert!(got.is_none() && warned.is_empty()),
            }
        }
        // Invariant 6: whatever the annotations say, the organisation's maximum and the hard
        // maximum cap the effective timeout.
        let mut policy = PolicyConfig {
            global_default: Dur::secs(global.min(hard)),
            hard_max: Dur::secs(hard),
            ..PolicyConfig::default()
        };
        if let (Some(m), Some(org)) = (org_max, &s.org) {
            policy.organization_max.insert(org.clone(), Dur::secs(m));
        }
        let r = resolve(&s, &policy);
        prop_assert!(r.timeout > Duration::ZERO);
        prop_assert!(r.timeout.as_secs() <= hard);
        if let (Some(m), Some(_)) = (org_max, &s.org) {
            prop_assert!(r.timeout.as_secs() <= m, "org max {m} exceeded: {r:?}");
        }
        prop_assert!(r.grace <= policy.grace_max.0);
    }
}
