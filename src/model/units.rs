//! Sizes with units (`2MB`, `1GiB`, `1.5Kbit`): one reader, powers of 1024, for the two places
//! that take them: a flavor's `hw:mem_page_size` (`crate::fit`, oslo.utils'
//! `string_to_bytes(text, 'IEC')` exactly, as Nova calls it) and nova.conf's
//! `reserved_huge_pages` sizes (`crate::nova::conf`, the lenient reading this project has always
//! done there: any case, `b` for bytes, the unit optional); and libvirt's memory quantities
//! (`<memory unit='KiB'>`, [`to_kib`]). Pure: no I/O.

use crate::limits;
/// How the letters of a size are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// oslo.utils' IEC regex `^[-+]?\d*\.?\d+([KMGT]i?)?(b|bit|B)$`: case matters, `b` and
    /// `bit` are bits, `B` bytes, a unit is required; signed and fractional numbers.
    Oslo,
    /// nova.conf: `<digits>[ ][k|m|g][i][b]`, any case, `b` is bytes, no unit means bytes.
    /// (`ib`/`b` are stripped from the end as often as they occur, as before.)
    Conf,
}

/// What was wrong with a size text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// No number where one belongs (or not one this syntax reads).
    NotASize,
    /// A number, then letters that are no unit.
    UnknownUnit,
}

/// A size text taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size<'a> {
    /// The number as written (`2`, `1.5`, `-3`).
    pub number: &'a str,
    /// The power of 1024 of the prefix: K 1, M 2, G 3, T 4; 0 without a prefix.
    pub exponent: u32,
    /// Bits (`b`, `bit` in oslo's syntax) rather than bytes.
    pub bits: bool,
}

/// The power of 1024 a prefix letter stands for.
fn exponent(c: char) -> Option<u32> {
    "KMGT".find(c).map(|i| i as u32 + 1)
}

/// Take a size apart in `syntax`.
pub fn split(text: &str, syntax: Syntax) -> Result<Size<'_>, SizeError> {
    match syntax {
        Syntax::Oslo => split_oslo(text),
        Syntax::Conf => split_conf(text),
    }
}

fn split_oslo(text: &str) -> Result<Size<'_>, SizeError> {
    let unit_len = if text.ends_with("bit") {
        3
    } else if text.ends_with('b') || text.ends_with('B') {
        1
    } else {
        return Err(SizeError::UnknownUnit);
    };
    let bits = unit_len == 3 || text.ends_with('b');
    let rest = &text[..text.len() - unit_len];
    let (number, exp) = match rest.strip_suffix('i') {
        Some(r) => {
            let p = r.chars().last().ok_or(SizeError::NotASize)?;
            let exp = exponent(p).ok_or(SizeError::UnknownUnit)?;
            (&r[..r.len() - p.len_utf8()], exp)
        }
        None => match rest.chars().last().and_then(exponent) {
            Some(exp) => (&rest[..rest.len() - 1], exp),
            None => (rest, 0),
        },
    };
    // ^[-+]?\d*\.?\d+
    let body = number.strip_prefix(['-', '+']).unwrap_or(number);
    let ok = !body.is_empty()
        && body.chars().last().is_some_and(|c| c.is_ascii_digit())
        && body.chars().all(|c| c.is_ascii_digit() || c == '.')
        && body.matches('.').count() <= 1;
    if !ok {
        return Err(SizeError::NotASize);
    }
    Ok(Size {
        number,
        exponent: exp,
        bits,
    })
}

fn split_conf(text: &str) -> Result<Size<'_>, SizeError> {
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let lower = text[digits..].to_ascii_lowercase();
    let unit = lower.trim().trim_end_matches("ib").trim_end_matches('b');
    // The number is checked before the unit, as before.
    if digits == 0 || text[..digits].parse::<u64>().is_err() {
        return Err(SizeError::NotASize);
    }
    let exp = match unit {
        "" => 0,
        // T was never taken here (a page that large is refused anyway).
        u if u.len() == 1 => exponent(u.chars().next().unwrap_or(' ').to_ascii_uppercase())
            .filter(|e| *e <= 3)
            .ok_or(SizeError::UnknownUnit)?,
        _ => return Err(SizeError::UnknownUnit),
    };
    Ok(Size {
        number: &text[..digits],
        exponent: exp,
        bits: false,
    })
}

impl Size<'_> {
    /// oslo.utils' arithmetic with `return_int=True`: the number as a float, bits divided by
    /// 8, times 1024 per prefix step, rounded up. None if the number does not parse.
    pub fn bytes_ceil(&self) -> Option<f64> {
        let mut mag: f64 = self.number.parse().ok()?;
        if self.bits {
            mag /= 8.0;
        }
        Some((mag * 1024f64.powi(self.exponent as i32)).ceil())
    }

    /// Whole KiB in integers: bytes (no prefix) rounded down, K as is, M and up multiplied,
    /// bits divided by 8 first. `Err(NotASize)` for a number that is not a whole u64, `Ok(None)`
    /// when the result overflows u64.
    pub fn whole_kib(&self) -> Result<Option<u64>, SizeError> {
        let n: u64 = self.number.parse().map_err(|_| SizeError::NotASize)?;
        let n = if self.bits { n / 8 } else { n };
        Ok(match self.exponent {
            0 => Some(n / 1024),
            e => 1024u64.checked_pow(e - 1).and_then(|m| n.checked_mul(m)),
        })
    }
}

/// oslo.utils `string_to_bytes(text, 'IEC', return_int=True)`: `<number>[KMGT][i](b|bit|B)`,
/// powers of 1024, bits divided by 8, rounded up; None where oslo raises `ValueError`.
pub fn string_to_bytes(text: &str) -> Option<f64> {
    split(text, Syntax::Oslo).ok()?.bytes_ceil()
}

/// Convert a libvirt memory quantity to KiB (`unit` defaults to KiB as in libvirt). Every step
/// is checked: a quantity that overflows, or is above 64 TiB, is refused, never wrapped.
pub fn to_kib(value: u64, unit: Option<&str>) -> Result<u64, String> {
    let unit = unit.unwrap_or("KiB");
    let bytes_per_unit: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "P" | "PiB" => 1 << 50,
        "EB" => 1_000_000_000_000_000_000,
        "E" | "EiB" => 1 << 60,
        other => return Err(format!("unknown memory unit '{other}'")),
    };
    let kib = limits::checked_kib(value, bytes_per_unit)
        .ok_or_else(|| format!("memory value {value} {unit} overflows"))?;
    limits::memory_kib(&format!("memory value {value} {unit}"), kib).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oslo_syntax() {
        assert_eq!(string_to_bytes("2MB"), Some(2097152.0));
        assert_eq!(string_to_bytes("1GiB"), Some(1073741824.0));
        assert_eq!(string_to_bytes("1.5KB"), Some(1536.0));
        assert_eq!(string_to_bytes("8Kbit"), Some(1024.0));
        assert_eq!(string_to_bytes("1Kb"), Some(128.0));
        assert_eq!(string_to_bytes("3b"), Some(1.0));
        assert_eq!(string_to_bytes("-1KB"), Some(-1024.0));
        assert_eq!(string_to_bytes(".5KB"), Some(512.0));
        for bad in [
            "2mb", "2M", "2 MB", "1.KB", "1.2.3KB", "KB", "iB", "2XB", "2€iB", "€B", "",
        ] {
            assert_eq!(string_to_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn conf_syntax() {
        let kib = |t| split(t, Syntax::Conf).and_then(|s| s.whole_kib());
        assert_eq!(kib("2MB"), Ok(Some(2048)));
        assert_eq!(kib("2mb"), Ok(Some(2048)));
        assert_eq!(kib("2 MiB"), Ok(Some(2048)));
        assert_eq!(kib("1G"), Ok(Some(1048576)));
        assert_eq!(kib("2048KB"), Ok(Some(2048)));
        assert_eq!(kib("4096b"), Ok(Some(4)));
        assert_eq!(kib("18446744073709551615G"), Ok(None));
        assert_eq!(kib("huge"), Err(SizeError::NotASize));
        assert_eq!(kib("1T"), Err(SizeError::UnknownUnit));
        assert_eq!(kib("2xb"), Err(SizeError::UnknownUnit));
        assert_eq!(kib("99999999999999999999k"), Err(SizeError::NotASize));
    }
    #[test]
    fn units() {
        assert_eq!(to_kib(1, Some("GiB")).unwrap(), 1048576);
        assert_eq!(to_kib(2048, Some("b")).unwrap(), 2);
        assert_eq!(to_kib(64, Some("MiB")).unwrap(), 65536);
        assert!(to_kib(u64::MAX, Some("TiB")).is_err());
        // Decimal units overflowed silently before: now every step is checked and bounded.
        for unit in ["KB", "MB", "GB", "TB", "PB", "EB", "b", "KiB", "EiB"] {
            let e = to_kib(u64::MAX, Some(unit)).unwrap_err();
            assert!(
                e.contains("overflows") || e.contains("more than"),
                "{unit}: {e}"
            );
        }
        assert_eq!(to_kib(1_000_000, Some("KB")).unwrap(), 976_562);
        assert_eq!(to_kib(1, Some("TB")).unwrap(), 976_562_500);
        assert_eq!(
            to_kib(64, Some("TiB")).unwrap(),
            crate::limits::MAX_MEMORY_KIB
        );
        assert!(to_kib(65, Some("TiB")).unwrap_err().contains("more than"));
    }
}
