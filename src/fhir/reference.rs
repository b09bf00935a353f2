//! Reading FHIR references: `Patient/1`, `Patient/1/_history/2`, an absolute
//! `https://host/fhir/Patient/1`, a contained `#p1`, a `urn:uuid:` placeholder.

/// A literal reference to a resource by type and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The service base for an absolute reference (`https://host/fhir`), else `None`.
    pub base: Option<&'a str>,
    pub rtype: &'a str,
    pub id: &'a str,
    pub version: Option<&'a str>,
}

fn is_type_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.bytes().all(|b| b.is_ascii_alphabetic())
}

pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `None` for contained (`#…`), `urn:` and anything that is not `[base/]Type/id[/_history/v]`.
pub fn parse(r: &str) -> Option<Parsed<'_>> {
    if r.starts_with('#') || r.starts_with("urn:") {
        return None;
    }
    let path = r.split(['?', '#']).next()?;
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    let (ti, version) = if n >= 4 && parts[n - 2] == "_history" {
        (n - 4, Some(parts[n - 1]))
    } else if n >= 2 {
        (n - 2, None)
    } else {
        return None;
    };
    let (rtype, id) = (parts[ti], parts[ti + 1]);
    if !is_type_name(rtype) || !is_id(id) {
        return None;
    }
    let base = if ti == 0 {
        None
    } else {
        let prefix_len: usize = parts[..ti].iter().map(|p| p.len() + 1).sum::<usize>() - 1;
        if !path.contains("://") {
            return None;
        }
        Some(&path[..prefix_len])
    };
    Some(Parsed {
        base,
        rtype,
        id,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let p = parse("Patient/1").unwrap();
        assert_eq!(
            (p.base, p.rtype, p.id, p.version),
            (None, "Patient", "1", None)
        );
        let p = parse("https://h/fhir/Task/a-b/_history/3").unwrap();
        assert_eq!(
            (p.base, p.rtype, p.id, p.version),
            (Some("https://h/fhir"), "Task", "a-b", Some("3"))
        );
        assert!(parse("#p1").is_none());
        assert!(parse("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0").is_none());
        assert!(parse("patient/1").is_none());
        assert!(parse("a/b/Patient/1").is_none());
        assert!(parse("Patient").is_none());
    }
}
