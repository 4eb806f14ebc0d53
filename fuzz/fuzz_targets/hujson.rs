//! Fuzz the HuJSON standardiser alone (fast, so many more executions than
//! `policy_parse`): any input gives a value or an error, never a panic;
//! standardising keeps byte offsets (same length), its output parses as
//! JSON exactly when `hujson::parse` succeeds, and for such inputs it is
//! idempotent. (Not for invalid ones: `[1,,,]` loses one trailing comma per
//! pass, and the JSON parse after it refuses every form; the first run
//! found that, a wrong expectation of the target, not a server bug.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyscale::policy::hujson;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match hujson::standardize(text) {
        Ok(std) => {
            assert_eq!(std.len(), text.len(), "standardising must keep byte offsets");
            let as_json = serde_json::from_str::<serde_json::Value>(&std).is_ok();
            assert_eq!(as_json, hujson::parse(text).is_ok(), "parse agrees with the standard form");
            if as_json {
                let again = hujson::standardize(&std).expect("standard JSON stays acceptable");
                assert_eq!(again, std, "standardising valid input is idempotent");
            }
        }
        Err(_) => assert!(hujson::parse(text).is_err()),
    }
});
