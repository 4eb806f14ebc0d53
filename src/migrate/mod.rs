//! Moving in: reading a Headscale server's database and keys
//! ([`headscale`], feature `migrate`) through a small read-only SQLite
//! reader ([`sqlite`]), and bcrypt verification for the keys it carried
//! ([`bcrypt`], a leaf room since the API keys' check uses it: a server
//! started from an imported database must check them whichever binary
//! runs it).

pub use crate::bcrypt;
#[cfg(feature = "migrate")]
pub mod headscale;
#[cfg(feature = "migrate")]
pub mod sqlite;
