//! Shared by tests/migrate.rs and tests/e2e_migrate.rs: Headscale's current
//! SQLite layout (0.28 on), written here from the facts in Headscale's
//! hscontrol/db/schema.sql, and keys whose bcrypt hashes were made by the
//! system's libxcrypt (Python's `crypt` module), not by the code under test.
#![allow(dead_code)]

pub const PAK_PREFIX: &str = "a1b2c3d4e5f6";
pub const PAK_SECRET: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
pub const PAK_HASH: &str = "$2b$05$VyHtpuxep43uVOBNXokQpeVfx6TDyHMhdVF2s83.9sbMfb9xyBHDi";
pub const API_SECRET: &str = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";
pub const API_HASH: &str = "$2b$05$dAs/PltqcH5jrl1B892ZWuMJe2rrZzEoBM5jeYwpjeRiWsjpro3je";

pub const SCHEMA: &str = "
CREATE TABLE users(id integer PRIMARY KEY AUTOINCREMENT, name text, display_name text,
  email text, provider_identifier text, provider text, profile_pic_url text,
  created_at datetime, updated_at datetime, deleted_at datetime);
CREATE TABLE pre_auth_keys(id integer PRIMARY KEY AUTOINCREMENT, key text, prefix text,
  hash blob, user_id integer, description text, reusable numeric, ephemeral numeric DEFAULT false,
  used numeric DEFAULT false, tags text, expiration datetime, revoked datetime, created_at datetime);
CREATE TABLE api_keys(id integer PRIMARY KEY AUTOINCREMENT, prefix text, hash blob,
  user_id integer, expiration datetime, last_seen datetime, created_at datetime);
CREATE TABLE nodes(id integer PRIMARY KEY AUTOINCREMENT, machine_key text, node_key text,
  disco_key text, endpoints text, host_info text, ipv4 text, ipv6 text, hostname text,
  given_name varchar(63), user_id integer, register_method text, tags text, auth_key_id integer,
  last_seen datetime, expiry datetime, approved_routes text, created_at datetime,
  updated_at datetime, deleted_at datetime);
CREATE TABLE policies(id integer PRIMARY KEY AUTOINCREMENT, data text, created_at datetime,
  updated_at datetime, deleted_at datetime);
";
