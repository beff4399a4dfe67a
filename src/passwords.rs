//! Who may log in to the admin endpoint, as the site file and an htpasswd
//! `users_file` name them: bcrypt hashes checked for shape and cost when
//! the file is read, so that `validate` refuses what a login would choke on.

use std::path::Path;

/// A bcrypt hash as `teebox hash-password` (or `htpasswd -B`) writes it.
/// Only [`BcryptHash::parse`] makes one, so a user's hash is checked once,
/// where the site file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BcryptHash(String);

/// Why a hash is not one teebox can check passwords against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("not a bcrypt hash")]
    NotBcrypt,
    /// Another scheme htpasswd writes: named, since it is an easy mix-up.
    #[error("an {0} hash, not bcrypt")]
    OtherScheme(&'static str),
    #[error("not a bcrypt hash: it has {0} characters where bcrypt has 60")]
    Length(usize),
    #[error("not a bcrypt hash: its cost `{0}` is not 04 to 31")]
    Cost(String),
    /// A hash teebox could check only after minutes or days: the login,
    /// and the decoy made at start and on each reload, would stall.
    #[error("a bcrypt hash of cost {0}, over the limit of {MAX_COST} (each step doubles the time of every login check)")]
    TooCostly(u32),
}

/// The highest bcrypt cost taken, as `htpasswd -B -C` allows: a check at
/// this cost already takes seconds, and one at 31 would take days.
pub const MAX_COST: u32 = 17;

/// Hash schemes htpasswd and crypt(3) write, by the prefix they start with.
const OTHER_SCHEMES: [(&str, &str); 5] = [
    ("$apr1$", "Apache MD5 (`$apr1$`)"),
    ("{SHA}", "SHA-1 (`{SHA}`)"),
    ("$1$", "MD5-crypt (`$1$`)"),
    ("$5$", "SHA-256-crypt (`$5$`)"),
    ("$6$", "SHA-512-crypt (`$6$`)"),
];

impl BcryptHash {
    /// `$2b$12$` and 53 characters of bcrypt's base64 (`$2a$`, `$2x$` and
    /// `$2y$` are taken too).
    pub fn parse(text: &str) -> Result<BcryptHash, HashError> {
        if let Some((_, scheme)) = OTHER_SCHEMES.iter().find(|(p, _)| text.starts_with(p)) {
            return Err(HashError::OtherScheme(scheme));
        }
        if !["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| text.starts_with(p))
        {
            return Err(HashError::NotBcrypt);
        }
        if !text.is_ascii() {
            return Err(HashError::NotBcrypt);
        }
        if text.len() != 60 {
            return Err(HashError::Length(text.len()));
        }
        let cost = &text[4..6];
        let cost_value = match cost.parse::<u32>() {
            Ok(n @ 4..=31) if text.as_bytes()[6] == b'$' => n,
            _ => return Err(HashError::Cost(cost.to_string())),
        };
        if cost_value > MAX_COST {
            return Err(HashError::TooCostly(cost_value));
        }
        let bcrypt_base64 = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'/';
        if !text.as_bytes()[7..].iter().all(|b| bcrypt_base64(*b)) {
            return Err(HashError::NotBcrypt);
        }
        Ok(BcryptHash(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn cost(&self) -> u32 {
        self.0[4..6].parse().unwrap_or(bcrypt::DEFAULT_COST)
    }
}

/// Why a user name cannot be used: HTTP Basic splits name and password at
/// the first `:`.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the user name is empty".into());
    }
    if name.contains(':') {
        return Err(format!("the user name `{name}` holds a `:`"));
    }
    Ok(())
}

/// A `users_file` larger than this is refused unread: htpasswd files are
/// small, and reading a device or a wrong path whole could take all memory.
pub const MAX_USERS_FILE: u64 = 4 << 20;

/// A line of a `users_file` that is not `name:bcrypt-hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// Counted from 1.
    pub number: usize,
    pub why: String,
}

/// Why a `users_file` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    #[error("cannot read users_file {path}: {source}")]
    Unreadable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Every line that is wrong, so that one run shows them all.
    #[error("users_file {}: {} bad line(s)", .path.display(), .lines.len())]
    BadLines {
        path: std::path::PathBuf,
        lines: Vec<BadLine>,
    },
}

/// The users of an htpasswd file of bcrypt lines (`name:$2y$...`; blank
/// lines and `#` comments skipped), every line checked.
pub fn read_users_file(path: &Path) -> Result<Vec<(String, BcryptHash)>, UsersFileError> {
    let unreadable = |source| UsersFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    // Past the limit: "cannot read users_file …: larger than the limit of 4 MiB".
    let text =
        crate::bounded_read::read_text(path, MAX_USERS_FILE, crate::bounded_read::Kind::Regular)
            .map_err(unreadable)?;
    // A byte order mark, as Windows editors write, would otherwise become
    // part of the first user's name, and that user could never log in.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut users = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let checked = match line.split_once(':') {
            None => Err("expected name:bcrypt-hash".to_string()),
            Some((name, hash)) => check_user_name(name).and_then(|()| {
                BcryptHash::parse(hash)
                    .map(|hash| (name.to_string(), hash))
                    .map_err(|why| format!("the hash for `{name}` is {why}"))
            }),
        };
        match checked {
            Ok(user) => users.push(user),
            Err(why) => bad.push(BadLine { number: n + 1, why }),
        }
    }
    if !bad.is_empty() {
        return Err(UsersFileError::BadLines {
            path: path.to_path_buf(),
            lines: bad,
        });
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_file_may_start_with_a_byte_order_mark() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let path = std::env::temp_dir().join(format!("teebox-bom-{}.users", std::process::id()));
        std::fs::write(&path, format!("\u{feff}ops:{hash}\r\n# note\r\n")).unwrap();
        let users = read_users_file(&path);
        std::fs::remove_file(&path).unwrap();
        let names: Vec<String> = users.unwrap().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["ops"]);
    }

    #[test]
    fn refuses_other_hashes() {
        let bcrypt = bcrypt::hash("pw", 4).unwrap();
        assert_eq!(BcryptHash::parse(&bcrypt).map(|h| h.0), Ok(bcrypt.clone()));
        assert_eq!(BcryptHash::parse("plain"), Err(HashError::NotBcrypt));
        assert_eq!(
            BcryptHash::parse("$apr1$salt$hash"),
            Err(HashError::OtherScheme("Apache MD5 (`$apr1$`)"))
        );
        assert_eq!(
            BcryptHash::parse("$2b$12$short"),
            Err(HashError::Length(12))
        );
        let cost_99 = format!("$2b$99{}", &bcrypt[6..]);
        assert_eq!(
            BcryptHash::parse(&cost_99),
            Err(HashError::Cost("99".into()))
        );
        let bad_char = format!("{}!", &bcrypt[..59]);
        assert_eq!(BcryptHash::parse(&bad_char), Err(HashError::NotBcrypt));
        let cost_31 = format!("$2b$31{}", &bcrypt[6..]);
        assert_eq!(BcryptHash::parse(&cost_31), Err(HashError::TooCostly(31)));
        let cost_17 = format!("$2b$17{}", &bcrypt[6..]);
        assert!(BcryptHash::parse(&cost_17).is_ok());
        // Multi-byte text of bcrypt's length is refused, never sliced apart.
        let wide = format!("$2b$1é{}", &bcrypt[8..]);
        assert!(BcryptHash::parse(&wide).is_err());
    }
}
