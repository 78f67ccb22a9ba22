//! Timestamps as docs/DATA.md accepts them: a number of seconds, or an ISO
//! 8601 date-time (`YYYY-MM-DD`, then `T` or a space and `HH:MM[:SS[.fff]]`,
//! then `Z` or `±HH:MM`; no offset is UTC). The trainer's
//! `dataset.parse_timestamp` is the twin.

/// Seconds, or `None` when `value` is neither form.
pub fn parse_timestamp(value: &str) -> Option<f64> {
    let value = value.trim();
    if let Ok(t) = value.parse::<f64>() {
        return t.is_finite().then_some(t);
    }
    iso8601(value.as_bytes())
}

fn digits(s: &[u8], at: usize, n: usize) -> Option<i64> {
    let part = s.get(at..at + n)?;
    part.iter().all(u8::is_ascii_digit).then(|| {
        part.iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
    })
}

fn iso8601(s: &[u8]) -> Option<f64> {
    let (y, mo, d) = (digits(s, 0, 4)?, digits(s, 5, 2)?, digits(s, 8, 2)?);
    if s[4] != b'-' || s[7] != b'-' || !(1..=12).contains(&mo) || d < 1 || d > days_in(y, mo) {
        return None;
    }
    let mut at = 10;
    let (mut hh, mut mm, mut ss, mut frac) = (0, 0, 0, 0.0);
    if matches!(s.get(at), Some(b'T' | b' ')) {
        hh = digits(s, at + 1, 2)?;
        (s.get(at + 3) == Some(&b':')).then_some(())?;
        mm = digits(s, at + 4, 2)?;
        at += 6;
        if s.get(at) == Some(&b':') {
            ss = digits(s, at + 1, 2)?;
            at += 3;
            if s.get(at) == Some(&b'.') {
                let end = at
                    + 1
                    + s[at + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_digit())
                        .count();
                (end > at + 1).then_some(())?;
                frac = std::str::from_utf8(&s[at..end]).ok()?.parse::<f64>().ok()?;
                at = end;
            }
        }
        if hh > 23 || mm > 59 || ss > 59 {
            return None;
        }
    }
    let offset = match &s[at..] {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), ..] if s.len() == at + 6 && s[at + 3] == b':' => {
            let minutes = digits(s, at + 1, 2)? * 60 + digits(s, at + 4, 2)?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let seconds = days_from_civil(y, mo, d) * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    Some(seconds as f64 + frac)
}

fn days_in(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_timestamp;

    #[test]
    fn the_forms_the_contract_names() {
        assert_eq!(parse_timestamp("12.5"), Some(12.5));
        assert_eq!(parse_timestamp("1970-01-02"), Some(86_400.0));
        assert_eq!(parse_timestamp("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:01.25Z"), Some(1.25));
        assert_eq!(parse_timestamp("2020-01-01T10:00Z"), Some(1_577_872_800.0));
        assert_eq!(parse_timestamp("2000-02-29"), Some(951_782_400.0));
        for bad in [
            "",
            "nan",
            "inf",
            "2020-02-30",
            "2020-1-1",
            "yesterday",
            "2020-01-01T25:00",
            "2020-01-01T10",
            "2020-01-01Z+",
            "1900-02-29",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }
}
