//! Kubernetes resource quantities (`resource.Quantity`): `100m`, `0.5`, `2`, `128Mi`,
//! `1G`, `1e3`, parsed exactly into thousandths of the base unit (milli-CPU for CPU,
//! milli-bytes for memory) so comparisons never round.

/// A quantity in thousandths of its unit; None when the text is not a quantity.
pub fn parse_milli(text: &str) -> Option<i128> {
    let s = text.trim();
    if s.is_empty() {
        return None;
    }
    let (sign, s) = match s.as_bytes()[0] {
        b'-' => (-1, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    if number.is_empty() || number == "." {
        return None;
    }
    // number = digits[.digits] as an integer mantissa and a count of decimals.
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') {
        return None;
    }
    let mut mantissa: i128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(i128::from(b - b'0'))?;
    }
    let decimals = frac_part.len() as i32;
    // value = mantissa * 10^-decimals * multiplier; we want value * 1000.
    let (base2, base10): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        s if s.starts_with(['e', 'E']) => (0, s[1..].parse().ok()?),
        _ => return None,
    };
    let mut value = mantissa.checked_mul(1i128.checked_shl(base2)?)?;
    let exp10 = base10 + 3 - decimals;
    if exp10 >= 0 {
        value = value.checked_mul(10i128.checked_pow(exp10 as u32)?)?;
    } else {
        // Kubernetes rounds sub-milli amounts up (a request is never understated).
        let div = 10i128.checked_pow((-exp10) as u32)?;
        value = (value + div - 1) / div;
    }
    Some(sign * value)
}

/// CPU in millicores.
pub fn cpu_millis(text: &str) -> Option<i64> {
    parse_milli(text).map(|m| m as i64)
}

/// A count or byte size in whole units (rounded up).
pub fn units(text: &str) -> Option<i64> {
    parse_milli(text).map(|m| ((m + 999).div_euclid(1000)) as i64)
}

/// A non-negative amount of `10^scale` units in its canonical decimal-SI form, as
/// `resource.Quantity.String()` writes it: the largest SI suffix that keeps the
/// mantissa whole (`123456n`, `250m`, `2`, `12k`, `0`).
pub fn format_decimal(amount: u128, scale: i32) -> String {
    if amount == 0 {
        return "0".into();
    }
    let (mut mantissa, mut exp) = (amount, scale);
    // Move to an exponent that is a multiple of 3 (SI suffixes), never losing digits.
    while exp.rem_euclid(3) != 0 {
        mantissa *= 10;
        exp -= 1;
    }
    while exp < 18 && mantissa.is_multiple_of(1000) {
        mantissa /= 1000;
        exp += 3;
    }
    let suffix = match exp {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        e => return format!("{mantissa}e{e}"),
    };
    format!("{mantissa}{suffix}")
}

/// A byte count in its canonical binary-SI form (`1234Ki`, `5Mi`; below 1024 and
/// not a multiple of 1024 as plain digits), as `resource.Quantity.String()` writes a
/// `BinarySI` quantity.
pub fn format_binary(bytes: u64) -> String {
    if bytes < 1024 {
        return format_decimal(u128::from(bytes), 0);
    }
    let (mut mantissa, mut power) = (bytes, 0usize);
    while power < 6 && mantissa.is_multiple_of(1024) {
        mantissa /= 1024;
        power += 1;
    }
    let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
    format!("{mantissa}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_format_canonically() {
        assert_eq!(format_decimal(123_456, -9), "123456n");
        assert_eq!(format_decimal(1_000_000, -9), "1m");
        assert_eq!(format_decimal(2_000_000_000, -9), "2");
        assert_eq!(format_decimal(250, -3), "250m");
        assert_eq!(format_decimal(12_000_000, -3), "12k");
        assert_eq!(format_decimal(0, -9), "0");
        assert_eq!(format_binary(1234 * 1024), "1234Ki");
        assert_eq!(format_binary(5 << 20), "5Mi");
        assert_eq!(format_binary(1025), "1025");
        assert_eq!(format_binary(1000), "1k");
        // What formats parses back to the same amount.
        assert_eq!(parse_milli(&format_decimal(1500, -3)), Some(1500));
        assert_eq!(parse_milli(&format_binary(3 << 20)), Some((3 << 20) * 1000));
    }

    #[test]
    fn quantities_parse_as_kubernetes_does() {
        assert_eq!(cpu_millis("100m"), Some(100));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(units("128Mi"), Some(128 << 20));
        assert_eq!(units("1G"), Some(1_000_000_000));
        assert_eq!(units("1e3"), Some(1000));
        assert_eq!(units("1.5Gi"), Some(3 << 29));
        assert_eq!(units("110"), Some(110));
        assert_eq!(cpu_millis("1u"), Some(1), "rounded up to a millicore");
        assert_eq!(units("abc"), None);
        assert_eq!(units("1Qi"), None);
        assert_eq!(units(""), None);
    }
}
