//! Moving in: reading a Headscale server's database and keys
//! ([`headscale`], feature `migrate`) through a small read-only SQLite
//! reader ([`sqlite`]), and bcrypt verification for the keys it carried
//! ([`bcrypt`], always built: a server started from an imported database
//! must check them whichever binary runs it).

pub mod bcrypt;
#[cfg(feature = "migrate")]
pub mod headscale;
#[cfg(feature = "migrate")]
pub mod sqlite;
