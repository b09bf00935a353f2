//! SMART on FHIR scopes for system clients: v2 `system/Task.rs`, `system/*.cruds` (and the v1
//! spellings `system/Task.read`, `.write`, `.*`). A request needs one permission on one type;
//! the system root (batch, transaction, system history) needs it on `*`.

/// One permission letter of SMART v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    fn letter(self) -> char {
        match self {
            Perm::Create => 'c',
            Perm::Read => 'r',
            Perm::Update => 'u',
            Perm::Delete => 'd',
            Perm::Search => 's',
        }
    }
}

/// A parsed `system/<Type|*>.<perms>` scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemScope {
    /// A resource type, or `*`.
    pub rtype: String,
    /// The letters of `cruds` it grants.
    pub perms: String,
}

impl SystemScope {
    /// Reads one scope; `None` for anything that is not a system resource scope.
    pub fn parse(scope: &str) -> Option<SystemScope> {
        let rest = scope.strip_prefix("system/")?;
        let (rtype, perms) = rest.split_once('.')?;
        // SMART v2 allows `?param=value` restrictions; they are not supported: no grant.
        if rtype.is_empty()
            || !(rtype == "*" || rtype.chars().all(|c| c.is_ascii_alphanumeric()))
            || perms.contains('?')
        {
            return None;
        }
        let perms = match perms {
            "read" => "rs".to_owned(),
            "write" => "cud".to_owned(),
            "*" => "cruds".to_owned(),
            p => {
                // v2: letters of `cruds`, in that order, each once
                let mut last = None;
                for c in p.chars() {
                    let pos = "cruds".find(c)?;
                    if last.is_some_and(|l| l >= pos) {
                        return None;
                    }
                    last = Some(pos);
                }
                if p.is_empty() {
                    return None;
                }
                p.to_owned()
            }
        };
        Some(SystemScope {
            rtype: rtype.to_owned(),
            perms,
        })
    }

    /// Whether this scope grants `perm` on `rtype` (`None`: the system root, `*` only).
    pub fn allows(&self, rtype: Option<&str>, perm: Perm) -> bool {
        let type_ok = match rtype {
            Some(t) => self.rtype == "*" || self.rtype == t,
            None => self.rtype == "*",
        };
        type_ok && self.perms.contains(perm.letter())
    }

    /// Whether `self` grants everything `other` does (for narrowing requested scopes).
    pub fn covers(&self, other: &SystemScope) -> bool {
        (self.rtype == "*" || self.rtype == other.rtype)
            && other.perms.chars().all(|c| self.perms.contains(c))
    }
}

/// The scopes of a space-separated `scope` value that `registered` allows, in request order.
pub fn grant(requested: &str, registered: &[String]) -> Vec<String> {
    let allowed: Vec<SystemScope> = registered
        .iter()
        .filter_map(|s| SystemScope::parse(s))
        .collect();
    requested
        .split_whitespace()
        .filter(|s| {
            SystemScope::parse(s).is_some_and(|want| allowed.iter().any(|a| a.covers(&want)))
        })
        .map(str::to_owned)
        .collect()
}

/// Whether any scope of a space-separated list grants `perm` on `rtype`.
pub fn permits(scopes: &str, rtype: Option<&str>, perm: Perm) -> bool {
    scopes
        .split_whitespace()
        .filter_map(SystemScope::parse)
        .any(|s| s.allows(rtype, perm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_scopes() {
        let s = SystemScope::parse("system/Task.rs").unwrap();
        assert!(s.allows(Some("Task"), Perm::Read));
        assert!(s.allows(Some("Task"), Perm::Search));
        assert!(!s.allows(Some("Task"), Perm::Update));
        assert!(!s.allows(Some("Patient"), Perm::Read));
        assert!(!s.allows(None, Perm::Read));
        assert!(
            SystemScope::parse("system/*.cruds")
                .unwrap()
                .allows(None, Perm::Delete)
        );
        assert_eq!(SystemScope::parse("system/Task.read").unwrap().perms, "rs");
        assert!(SystemScope::parse("system/Task.sr").is_none());
        assert!(SystemScope::parse("system/Task.rr").is_none());
        assert!(SystemScope::parse("system/Task.rs?status=x").is_none());
        assert!(SystemScope::parse("user/Task.rs").is_none());
        assert!(SystemScope::parse("system/Ta-sk.rs").is_none());
        assert!(SystemScope::parse("openid").is_none());
    }

    #[test]
    fn grants_are_narrowed_to_the_registration() {
        let reg = vec![
            "system/Task.rs".to_owned(),
            "system/Organization.cruds".to_owned(),
        ];
        assert_eq!(
            grant(
                "system/Task.r system/Task.u system/Organization.cu openid",
                &reg
            ),
            vec![
                "system/Task.r".to_owned(),
                "system/Organization.cu".to_owned()
            ]
        );
        assert!(grant("system/*.r", &reg).is_empty());
        assert!(permits(
            "system/Task.r system/*.s",
            Some("Patient"),
            Perm::Search
        ));
        assert!(!permits("system/Task.r", Some("Patient"), Perm::Read));
    }
}
