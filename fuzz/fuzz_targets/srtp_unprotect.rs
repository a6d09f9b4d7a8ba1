//! SRTP and SRTCP from the network: any datagram, for every suite, is
//! refused or decrypted without a panic, a refused one changes nothing
//! (the same bytes are refused again), and what the relay protects comes
//! back byte for byte.
#![no_main]

use baton_relay::core::srtp::{MAX_OVERHEAD, MasterKey, SrtpReceiver, SrtpSender, Suite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, packet)) = data.split_first() else {
        return;
    };
    let suite = Suite::ALL[usize::from(choice) % Suite::ALL.len()];
    let key = MasterKey::new(suite, &[0x5a; 46][..suite.master_len()]).expect("length");
    let mut receiver = SrtpReceiver::new(&key);
    let mut buf = [0u8; 2048 + MAX_OVERHEAD];
    let len = packet.len().min(2048);
    buf[..len].copy_from_slice(&packet[..len]);
    let rtcp = choice & 0x80 != 0;
    let first = if rtcp {
        receiver.unprotect_rtcp(&mut buf, len)
    } else {
        receiver.unprotect_rtp(&mut buf, len)
    };
    match first {
        Ok(plain) => {
            assert!(plain.len() <= len);
            receiver.commit(&plain);
        }
        Err(_) => {
            // Nothing was recorded: the same datagram is refused the same way.
            buf[..len].copy_from_slice(&packet[..len]);
            let again = if rtcp {
                receiver.unprotect_rtcp(&mut buf, len)
            } else {
                receiver.unprotect_rtp(&mut buf, len)
            };
            assert_eq!(again.err(), first.err());
        }
    }
    // Round trip: what a sender protects, a receiver with the key restores.
    let mut sender = SrtpSender::new(&key);
    let fresh = SrtpReceiver::new(&key);
    buf[..len].copy_from_slice(&packet[..len]);
    let sealed = if rtcp {
        sender.protect_rtcp(&mut buf, len)
    } else {
        sender.protect_rtp(&mut buf, len)
    };
    if let Ok(sealed) = sealed {
        assert!(sealed <= len + MAX_OVERHEAD);
        let opened = if rtcp {
            fresh.unprotect_rtcp(&mut buf, sealed)
        } else {
            fresh.unprotect_rtp(&mut buf, sealed)
        };
        let opened = opened.expect("the relay's own packet decrypts");
        assert_eq!(&buf[..opened.len()], &packet[..len]);
    }
});
