//! STUN from the network on an ICE leg: any datagram is refused or taken
//! as an authenticated Binding request without a panic; an accepted one
//! gets a response the relay itself reads back as the success response to
//! that request, and a refused one is refused again (nothing changes).
#![no_main]

use baton_relay::core::stun::{self, IceCredentials, IceText};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(pwd) = IceText::new("fuzzpasswordfuzzpassword") else {
        return;
    };
    let credentials = IceCredentials {
        local_ufrag: IceText::new("fuzz").expect("ufrag"),
        local_pwd: pwd,
        remote_ufrag: None,
    };
    // Half the inputs are made valid first, so the fuzzer explores past
    // the integrity check: the input's bytes pick the flags and the
    // transaction, and tail bytes are appended as junk.
    let mut buf = [0u8; 2048];
    let datagram: &[u8] = if data.first().is_some_and(|b| b & 1 == 1) && data.len() >= 13 {
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(&data[1..13]);
        let Some(len) = stun::write_request(&mut buf, &transaction, "fuzz:peer", &pwd, data[0] & 2 != 0, 7)
        else {
            return;
        };
        // Overwrite some bytes with the rest of the input.
        for (i, b) in data[13..].iter().enumerate().take(len) {
            if b & 0x80 != 0 {
                buf[i % len] ^= b & 0x7f;
            }
        }
        &buf[..len]
    } else {
        &data[..data.len().min(2048)]
    };
    let copy = datagram.to_vec();
    match stun::check_binding(&copy, &[credentials]) {
        Ok((request, _)) => {
            let mut out = [0u8; 2048];
            out[..copy.len()].copy_from_slice(&copy);
            let n = stun::write_success(&mut out, &request, "127.0.0.1:9".parse().expect("addr"), &pwd)
                .expect("room for a response");
            assert!(stun::is_success_for(&out[..n], &request.transaction));
        }
        Err(first) => {
            assert_eq!(stun::check_binding(&copy, &[credentials]).err(), Some(first));
        }
    }
});
