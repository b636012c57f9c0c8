//! Fuzzes the transaction → plan path: any body a homeserver (or an attacker with the hs_token)
//! can PUT is parsed and planned; a panic or a broken plan invariant is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = daarion_bridge::bridge::planner::fuzz::check_transaction(data) {
        panic!("plan invariant broken: {broken}");
    }
});
