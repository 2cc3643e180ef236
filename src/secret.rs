//! Secrets: random ones made here, and comparisons that do not leak through their timing.

use std::io::Read as _;

/// 32 random bytes from the kernel as 64 hex characters: safe inside URLs, cookies, env files
/// and YAML.
pub fn random_hex() -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `given` equals `want`, in time that depends only on `want`'s length, so response
/// times do not reveal how much of a guess was right.
pub fn same(given: &[u8], want: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ w;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_hex_and_compare_exactly() {
        let a = random_hex().expect("urandom");
        let b = random_hex().expect("urandom");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(same(a.as_bytes(), a.as_bytes()));
        assert!(!same(b.as_bytes(), a.as_bytes()));
        assert!(
            !same(&a.as_bytes()[..63], a.as_bytes()),
            "a prefix is not the secret"
        );
        assert!(!same(b"", a.as_bytes()));
        assert!(
            !same(b"s3cret!", b"s3cret"),
            "a longer guess is not the secret"
        );
    }
}
