//! Who may do what: roles, the permissions they grant (design §7), and service tokens
//! `vlt_<43 base62>`, of which only a SHA-256 is ever stored.

use crate::secret::SecretString;
use sha2::{Digest, Sha256};

/// A permission a route needs; deny by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    TokensRead,
    RotationsKickoff,
    RotationsStage,
    RotationsRevoke,
    AuditRead,
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Self::TokensRead,
        Self::RotationsKickoff,
        Self::RotationsStage,
        Self::RotationsRevoke,
        Self::AuditRead,
        Self::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokensRead => "velvet.tokens.read",
            Self::RotationsKickoff => "velvet.rotations.kickoff",
            Self::RotationsStage => "velvet.rotations.stage",
            Self::RotationsRevoke => "velvet.rotations.revoke",
            Self::AuditRead => "velvet.audit.read",
            Self::Admin => "velvet.admin",
        }
    }
}

/// A named set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Revoker,
    Auditor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Self::Viewer,
        Self::Operator,
        Self::Revoker,
        Self::Auditor,
        Self::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Revoker => "revoker",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether every permission of this role is also `other`'s (a token bound to an operator
    /// may not do more than the operator).
    pub fn within(self, other: Role) -> bool {
        Permission::ALL
            .into_iter()
            .all(|p| !self.grants(p) || other.grants(p))
    }

    /// Whether this role holds `p`. `admin` holds everything.
    pub fn grants(self, p: Permission) -> bool {
        use Permission as P;
        match self {
            Self::Admin => true,
            Self::Viewer => p == P::TokensRead,
            Self::Operator => matches!(p, P::TokensRead | P::RotationsKickoff | P::RotationsStage),
            Self::Revoker => matches!(
                p,
                P::TokensRead | P::RotationsKickoff | P::RotationsStage | P::RotationsRevoke
            ),
            Self::Auditor => matches!(p, P::TokensRead | P::AuditRead),
        }
    }
}

/// Names of operators and service tokens: `^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$`, printable
/// ASCII so that no bidi or zero-width character can disguise an actor (design §10).
pub fn valid_actor_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'))
}

pub const SERVICE_TOKEN_PREFIX: &str = "vlt_";
const BODY_LEN: usize = 43;
/// Characters of a token shown in lists so people can tell their tokens apart.
const DISPLAY_LEN: usize = SERVICE_TOKEN_PREFIX.len() + 6;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly minted service token: the value (shown once), its stored hash and display prefix.
#[derive(Debug)]
pub struct MintedToken {
    pub token: SecretString,
    pub hash: String,
    pub prefix: String,
}

/// Mints `vlt_` + 43 base62 characters (256 bits) from the OS generator.
pub fn mint_service_token() -> MintedToken {
    let mut out = String::with_capacity(SERVICE_TOKEN_PREFIX.len() + BODY_LEN);
    out.push_str(SERVICE_TOKEN_PREFIX);
    let mut buf = [0u8; 64];
    while out.len() < SERVICE_TOKEN_PREFIX.len() + BODY_LEN {
        getrandom::fill(&mut buf).expect("OS randomness");
        // Rejection sampling keeps every character equally likely.
        for b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == SERVICE_TOKEN_PREFIX.len() + BODY_LEN {
                break;
            }
            out.push(BASE62[usize::from(*b % 62)] as char);
        }
    }
    buf.iter_mut().for_each(|b| *b = 0);
    MintedToken {
        hash: hash_service_token(&out),
        prefix: out[..DISPLAY_LEN].to_string(),
        token: SecretString::new(out),
    }
}

/// A service token's public id: `st_` and 16 hex digits. Not a secret; it names the token in
/// lists, audit records and `DELETE /api/v1/auth/tokens/{id}`.
pub fn new_service_token_id() -> String {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).expect("OS randomness");
    format!("st_{}", hex::encode(raw))
}

/// Whether `s` has the shape of a service token (checked before any lookup).
pub fn looks_like_service_token(s: &str) -> bool {
    s.len() == SERVICE_TOKEN_PREFIX.len() + BODY_LEN
        && s.starts_with(SERVICE_TOKEN_PREFIX)
        && s[SERVICE_TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// The stored form of a token: hex SHA-256. Tokens carry 256 random bits, so a fast hash is
/// enough (no password stretching needed), and lookups stay one indexed read.
pub fn hash_service_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_the_design_says_and_nothing_else() {
        use Permission as P;
        let all = Permission::ALL;
        let granted = |r: Role| -> Vec<P> { all.into_iter().filter(|p| r.grants(*p)).collect() };
        assert_eq!(granted(Role::Viewer), vec![P::TokensRead]);
        assert_eq!(
            granted(Role::Operator),
            vec![P::TokensRead, P::RotationsKickoff, P::RotationsStage]
        );
        assert_eq!(
            granted(Role::Revoker),
            vec![
                P::TokensRead,
                P::RotationsKickoff,
                P::RotationsStage,
                P::RotationsRevoke
            ]
        );
        assert_eq!(granted(Role::Auditor), vec![P::TokensRead, P::AuditRead]);
        assert_eq!(granted(Role::Admin), all.to_vec());
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(
            Role::ALL.map(|r| r.as_str()).to_vec(),
            crate::config::ROLES.to_vec()
        );
    }

    #[test]
    fn roles_nest_by_their_permissions() {
        use Role::*;
        assert!(Viewer.within(Operator) && Operator.within(Revoker) && Revoker.within(Admin));
        assert!(Viewer.within(Auditor) && Auditor.within(Admin));
        assert!(!Auditor.within(Revoker) && !Operator.within(Auditor));
        assert!(!Admin.within(Revoker) && !Revoker.within(Operator));
        for r in Role::ALL {
            assert!(r.within(r) && r.within(Admin));
        }
    }

    #[test]
    fn actor_names_are_printable_ascii() {
        for ok in ["alice", "ci-deploy", "bob@example.com", "svc.1_a"] {
            assert!(valid_actor_name(ok), "{ok}");
        }
        for bad in [
            "admin\u{200b}",
            "\u{202e}nimda",
            "",
            "-x",
            "a b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!valid_actor_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn minted_tokens_have_the_contract_shape_and_differ() {
        let a = mint_service_token();
        let b = mint_service_token();
        let (ta, tb) = (a.token.expose(), b.token.expose());
        assert!(looks_like_service_token(ta), "{}", a.prefix);
        assert_eq!(ta.len(), 47);
        assert_ne!(ta, tb);
        assert!(ta.starts_with(&a.prefix) && a.prefix.len() == 10);
        assert_eq!(a.hash, hash_service_token(ta));
        assert_eq!(a.hash.len(), 64);
        assert!(
            !format!("{a:?}").contains(&ta[4..]),
            "Debug redacts the token"
        );
        assert!(!looks_like_service_token("vlt_short"));
        assert!(!looks_like_service_token(&ta.replace("vlt_", "xyz_")));
    }
}
