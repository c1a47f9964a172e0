//! CPU id sets: Nova's range syntax (`0-3,^2,8-11`) and a compact bitset the fit engine
//! can intersect quickly. Serialized as a sorted list of ids, the way facts show them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A set of CPU ids as a bitset (ids are small: hosts have at most a few thousand CPUs).
#[derive(Clone, Default)]
pub struct CpuSet {
    words: Vec<u64>,
}

impl CpuSet {
    /// The words without trailing empty ones: equal sets compare equal whatever their history.
    fn significant(&self) -> &[u64] {
        let n = self
            .words
            .iter()
            .rposition(|w| *w != 0)
            .map_or(0, |i| i + 1);
        &self.words[..n]
    }
}
impl PartialEq for CpuSet {
    fn eq(&self, o: &Self) -> bool {
        self.significant() == o.significant()
    }
}
impl Eq for CpuSet {}
impl std::hash::Hash for CpuSet {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.significant().hash(h)
    }
}

/// Largest CPU id accepted anywhere: guards against `0-4000000000` allocating gigabytes.
pub const MAX_CPU_ID: u32 = 65_535;

impl CpuSet {
    pub fn new() -> Self {
        CpuSet { words: Vec::new() }
    }
    pub fn insert(&mut self, id: u32) {
        let (w, b) = ((id / 64) as usize, id % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << b;
    }
    pub fn remove(&mut self, id: u32) {
        let (w, b) = ((id / 64) as usize, id % 64);
        if let Some(word) = self.words.get_mut(w) {
            *word &= !(1 << b);
        }
    }
    pub fn contains(&self, id: u32) -> bool {
        let (w, b) = ((id / 64) as usize, id % 64);
        self.words.get(w).is_some_and(|x| x & (1 << b) != 0)
    }
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, w)| {
            let mut w = *w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }
    pub fn union(&self, o: &CpuSet) -> CpuSet {
        let n = self.words.len().max(o.words.len());
        let words = (0..n)
            .map(|i| self.words.get(i).copied().unwrap_or(0) | o.words.get(i).copied().unwrap_or(0))
            .collect();
        CpuSet { words }
    }
    pub fn intersection(&self, o: &CpuSet) -> CpuSet {
        let words = self
            .words
            .iter()
            .zip(o.words.iter())
            .map(|(a, b)| a & b)
            .collect();
        CpuSet { words }
    }
    pub fn difference(&self, o: &CpuSet) -> CpuSet {
        let words = self
            .words
            .iter()
            .enumerate()
            .map(|(i, a)| a & !o.words.get(i).copied().unwrap_or(0))
            .collect();
        CpuSet { words }
    }
    pub fn is_subset(&self, o: &CpuSet) -> bool {
        self.words
            .iter()
            .enumerate()
            .all(|(i, w)| w & !o.words.get(i).copied().unwrap_or(0) == 0)
    }
    /// `|self ∖ minus|`, or `|(self ∩ within) ∖ minus|`: counted without building a set.
    pub fn count_and_not(&self, minus: &CpuSet, within: Option<&CpuSet>) -> usize {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let keep = within.map_or(u64::MAX, |s| s.words.get(i).copied().unwrap_or(0));
                (w & keep & !minus.words.get(i).copied().unwrap_or(0)).count_ones() as usize
            })
            .sum()
    }
    pub fn first(&self) -> Option<u32> {
        self.iter().next()
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(it: I) -> Self {
        let mut s = CpuSet::new();
        for id in it {
            s.insert(id);
        }
        s
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", format_spec(self))
    }
}

impl Serialize for CpuSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for CpuSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<u32> = Vec::deserialize(d)?;
        if let Some(bad) = v.iter().find(|x| **x > MAX_CPU_ID) {
            return Err(serde::de::Error::custom(format!(
                "CPU id {bad} is larger than {MAX_CPU_ID}"
            )));
        }
        Ok(v.into_iter().collect())
    }
}

impl schemars::JsonSchema for CpuSet {
    fn schema_name() -> String {
        "CpuSet".into()
    }
    fn json_schema(g: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        <Vec<u32>>::json_schema(g)
    }
}

/// A CPU spec Nova would refuse (its own words, `Invalid <what> expression ...`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("Invalid {what} expression {rule:?} in CPU spec {spec:?}")]
    Invalid {
        what: &'static str,
        rule: String,
        spec: String,
    },
    #[error("CPU id {id} in CPU spec {spec:?} is larger than {MAX_CPU_ID}")]
    TooLarge { id: u64, spec: String },
}

/// Parse Nova's CPU spec exactly as `nova.virt.hardware.parse_cpu_spec` does (Queens..Stein):
/// comma-separated ids, `a-b` ranges, `^n` / `^a-b` exclusions applied after all inclusions.
pub fn parse_spec(spec: &str) -> Result<CpuSet, SpecError> {
    let mut inc = CpuSet::new();
    let mut rej = CpuSet::new();
    let num = |s: &str, rule: &str, what: &'static str| -> Result<u32, SpecError> {
        let n: u64 = s.trim().parse().map_err(|_| SpecError::Invalid {
            what,
            rule: rule.into(),
            spec: spec.into(),
        })?;
        if n > MAX_CPU_ID as u64 {
            return Err(SpecError::TooLarge {
                id: n,
                spec: spec.into(),
            });
        }
        Ok(n as u32)
    };
    for rule in spec.split(',') {
        let rule = rule.trim();
        if rule.is_empty() {
            continue;
        }
        if let Some((a, b)) = rule.split_once('-') {
            let (reject, a) = match a.strip_prefix('^') {
                Some(rest) => (true, rest),
                None => (false, a),
            };
            let (start, end) = (num(a, rule, "range")?, num(b, rule, "range")?);
            if start > end {
                return Err(SpecError::Invalid {
                    what: "range",
                    rule: rule.into(),
                    spec: spec.into(),
                });
            }
            for id in start..=end {
                if reject {
                    rej.insert(id)
                } else {
                    inc.insert(id)
                }
            }
        } else if let Some(rest) = rule.strip_prefix('^') {
            rej.insert(num(rest, rule, "exclusion")?);
        } else {
            inc.insert(num(rule, rule, "inclusion")?);
        }
    }
    Ok(inc.difference(&rej))
}

/// Format as Nova/libvirt do: `0-3,8,10-11`.
pub fn format_spec(set: &CpuSet) -> String {
    let ids = set.to_vec();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && ids[i + 1] == end + 1 {
            i += 1;
            end = ids[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nova_syntax() {
        assert_eq!(
            parse_spec("0-3,^2,8-11").unwrap().to_vec(),
            vec![0, 1, 3, 8, 9, 10, 11]
        );
        assert_eq!(parse_spec(" 1 , ,3").unwrap().to_vec(), vec![1, 3]);
        assert_eq!(parse_spec("0-7,^2-5").unwrap().to_vec(), vec![0, 1, 6, 7]);
        assert_eq!(parse_spec("^1,0-2").unwrap().to_vec(), vec![0, 2]);
        assert!(parse_spec("").unwrap().is_empty());
    }

    #[test]
    fn bad_specs_are_refused_with_the_rule() {
        assert!(parse_spec("3-1")
            .unwrap_err()
            .to_string()
            .contains("\"3-1\""));
        assert!(parse_spec("a")
            .unwrap_err()
            .to_string()
            .contains("inclusion"));
        assert!(parse_spec("^x")
            .unwrap_err()
            .to_string()
            .contains("exclusion"));
        assert!(parse_spec("0-99999999")
            .unwrap_err()
            .to_string()
            .contains("larger"));
    }

    #[test]
    fn format_round_trips() {
        for s in ["0-3,8,10-11", "5", "", "0,2,4"] {
            assert_eq!(format_spec(&parse_spec(s).unwrap()), s);
        }
    }

    #[test]
    fn set_ops() {
        let a: CpuSet = [1, 2, 3, 70].into_iter().collect();
        let b: CpuSet = [2, 70, 200].into_iter().collect();
        assert_eq!(a.intersection(&b).to_vec(), vec![2, 70]);
        assert_eq!(a.difference(&b).to_vec(), vec![1, 3]);
        assert_eq!(a.union(&b).len(), 5);
        assert!(!a.is_subset(&b));
        assert!(a.intersection(&b).is_subset(&a));
        // equality ignores how the set was built
        assert_eq!(a.difference(&a), CpuSet::new());
    }
}
