//! The validity dates of an X.509 certificate (RFC 5280 §4.1.2.5), read straight from its DER:
//! enough to warn at start and on reload that the certificate served is expired or not yet
//! valid (clients would refuse it). Pure; malformed input is `None`, never a panic.

/// `notBefore` and `notAfter` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before this time.
    pub not_before: i64,
    /// Not valid after this time.
    pub not_after: i64,
}

impl Validity {
    /// Reads the dates of a DER certificate.
    pub fn of(der: &[u8]) -> Option<Self> {
        let (cert, _) = tlv(der, 0x30)?;
        let (mut tbs, _) = tlv(cert, 0x30)?;
        // [0] EXPLICIT version, optional.
        if tbs.first() == Some(&0xa0) {
            tbs = tlv(tbs, 0xa0)?.1;
        }
        let tbs = tlv(tbs, 0x02)?.1; // serialNumber
        let tbs = tlv(tbs, 0x30)?.1; // signature algorithm
        let tbs = tlv(tbs, 0x30)?.1; // issuer
        let (validity, _) = tlv(tbs, 0x30)?;
        let (not_before, rest) = time(validity)?;
        let (not_after, _) = time(rest)?;
        Some(Self {
            not_before,
            not_after,
        })
    }

    /// Why the certificate is unusable at `now` (Unix seconds), if it is.
    pub fn problem(&self, now: i64) -> Option<&'static str> {
        if now > self.not_after {
            Some("expired")
        } else if now < self.not_before {
            Some("not yet valid")
        } else {
            None
        }
    }
}

/// One DER element with tag `tag` at the start of `der`: (its contents, what follows it).
fn tlv(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in Unix seconds.
fn time(der: &[u8]) -> Option<(i64, &[u8])> {
    let (text, rest, year) = match der.first()? {
        0x17 => {
            let (text, rest) = tlv(der, 0x17)?;
            // RFC 5280: YY >= 50 is 19YY, else 20YY.
            let yy = digits(text.get(..2)?)?;
            (
                text.get(2..)?,
                rest,
                if yy >= 50 { 1900 + yy } else { 2000 + yy },
            )
        }
        0x18 => {
            let (text, rest) = tlv(der, 0x18)?;
            (text.get(4..)?, rest, digits(text.get(..4)?)?)
        }
        _ => return None,
    };
    if text.len() != 11 || text[10] != b'Z' {
        return None;
    }
    let field = |i: usize| digits(&text[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((
        days * 86_400 + hour * 3_600 + minute * 60 + second.min(60),
        rest,
    ))
}

fn digits(text: &[u8]) -> Option<i64> {
    text.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // rcgen writes UTCTime before 2050 and GeneralizedTime from 2050 on.
        let v = Validity::of(&cert((2020, 1, 2), (2060, 3, 4))).unwrap();
        assert_eq!(v.not_before, 1_577_923_200); // 2020-01-02T00:00:00Z
        assert_eq!(v.not_after, 2_845_584_000); // 2060-03-04T00:00:00Z
        assert_eq!(v.problem(1_700_000_000), None);
        assert_eq!(v.problem(1_500_000_000), Some("not yet valid"));
        assert_eq!(v.problem(2_900_000_000), Some("expired"));
    }

    #[test]
    fn malformed_input_is_none() {
        let good = cert((2020, 1, 1), (2030, 1, 1));
        for n in [0, 1, 10, 40, good.len() / 2] {
            assert_eq!(Validity::of(&good[..n]), None, "{n} bytes");
        }
        assert_eq!(Validity::of(b"not a certificate"), None);
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }
}
