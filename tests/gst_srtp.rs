//! SRTP against GStreamer's `srtpenc`/`srtpdec` (libsrtp2 inside) as
//! devices and as the remote party: an independent implementation the
//! phones in the field share. The remote's decoder must see one stream
//! through a handoff between two SRTP devices of different suites, with the
//! outward sequence number wrapping on the way, and log no authentication
//! or replay failure (`GST_DEBUG=srtpdec:5` prints both).
//!
//! `.ci/run` installs gstreamer1.0-tools and plugins-good/-bad and sets
//! `BATON_REQUIRE_GSTREAMER=1`, so there the test runs or fails; elsewhere
//! it says it skipped.

mod common;

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use baton_proto::v1::{self, request::Command, response::Result as Reply};
use common::Relay;
use common::native::{by_id, pcmu};

const AOR: &str = "sip:alice@example.com";
const GRUU_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000a";
const GRUU_B: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000b";
const SSRC_A: u32 = 287_454_020;
const SSRC_B: u32 = 0x0b0b_0b0b;

/// Whether GStreamer with the SRTP elements is here; without it the test
/// fails under `BATON_REQUIRE_GSTREAMER=1` and skips otherwise.
fn gstreamer_present() -> bool {
    let present = ["srtpenc", "srtpdec", "rtppcmupay", "mulawenc"]
        .iter()
        .all(|element| {
            Process::new("gst-inspect-1.0")
                .arg(element)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if !present {
        assert!(
            std::env::var_os("BATON_REQUIRE_GSTREAMER").is_none(),
            "BATON_REQUIRE_GSTREAMER is set but gst-inspect-1.0 lacks srtpenc/srtpdec (gstreamer1.0-tools, -plugins-good, -plugins-bad)"
        );
        eprintln!(
            "SKIPPED: GStreamer with srtpenc/srtpdec (apt-get install gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)"
        );
    }
    present
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// GStreamer's cipher and auth names for an SDES suite.
fn gst_suite(suite: &str) -> (&'static str, &'static str, &'static str) {
    // (cipher, RTP auth, RTCP auth): the _32 suites still use an 80-bit
    // SRTCP tag (RFC 4568 §6.2).
    match suite {
        "AES_CM_128_HMAC_SHA1_80" => ("aes-128-icm", "hmac-sha1-80", "hmac-sha1-80"),
        "AES_CM_128_HMAC_SHA1_32" => ("aes-128-icm", "hmac-sha1-32", "hmac-sha1-80"),
        "AES_256_CM_HMAC_SHA1_80" => ("aes-256-icm", "hmac-sha1-80", "hmac-sha1-80"),
        "AEAD_AES_128_GCM" => ("aes-128-gcm", "null", "null"),
        "AEAD_AES_256_GCM" => ("aes-256-gcm", "null", "null"),
        other => panic!("no GStreamer names for {other}"),
    }
}

/// A device: PCMU at 20 ms, encrypted with `key`, sent to `to`.
fn sender(key: &v1::SrtpKey, ssrc: u32, first_seq: u16, packets: u32, to: &str) -> Child {
    let (cipher, auth, rtcp_auth) = gst_suite(&key.suite);
    let (host, port) = to.rsplit_once(':').expect("host:port");
    let pipeline = format!(
        "audiotestsrc is-live=true num-buffers={packets} samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 \
         ! mulawenc ! rtppcmupay ssrc={ssrc} seqnum-offset={first_seq} \
         ! srtpenc key={} rtp-cipher={cipher} rtp-auth={auth} rtcp-cipher={cipher} rtcp-auth={rtcp_auth} \
         ! udpsink host={host} port={port}",
        hex(&key.key)
    );
    Process::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_ascii_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0")
}

/// The remote party: decrypts SSRC `ssrc` with `key` on `port` and hands
/// the plain RTP to `out`; its debug log goes to stderr.
fn receiver(key: &v1::SrtpKey, ssrc: u32, port: u16, out: u16) -> Child {
    let (cipher, auth, rtcp_auth) = gst_suite(&key.suite);
    let caps = format!(
        "application/x-srtp,payload=(int)0,ssrc=(uint){ssrc},srtp-key=(buffer){},\
         srtp-cipher=(string){cipher},srtp-auth=(string){auth},\
         srtcp-cipher=(string){cipher},srtcp-auth=(string){rtcp_auth}",
        hex(&key.key)
    );
    Process::new("gst-launch-1.0")
        .env("GST_DEBUG", "srtpdec:5")
        .env("GST_DEBUG_NO_COLOR", "1")
        .args([
            "udpsrc",
            "address=127.0.0.1",
            &format!("port={port}"),
            &format!("caps={caps}"),
            "!",
            "srtpdec",
            "!",
            "udpsink",
            "host=127.0.0.1",
            &format!("port={out}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gst-launch-1.0")
}

fn stop(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    log
}

/// (SSRC, sequence, timestamp) of the plain RTP `socket` gets until it has
/// been quiet for a second.
fn collect(socket: &UdpSocket, until: Instant) -> Vec<(u32, u16, u32)> {
    socket
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        match socket.recv(&mut buf) {
            Ok(n) if n >= 12 => got.push((
                u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
                u16::from_be_bytes([buf[2], buf[3]]),
                u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            )),
            Ok(_) => {}
            Err(_) if !got.is_empty() => break,
            Err(_) => {}
        }
    }
    got
}

/// A session of one PCMU stream with `stream`'s peers and SRTP.
async fn create(
    client: &baton_control::Client,
    call_id: &str,
    stream: v1::StreamSpec,
) -> v1::CreateSessionResponse {
    let request = v1::CreateSessionRequest {
        call_id: call_id.into(),
        from_tag: "a".into(),
        to_tag: "r".into(),
        aor: AOR.into(),
        gruu: GRUU_A.into(),
        streams: vec![v1::StreamSpec {
            kind: "audio".into(),
            codecs: vec![pcmu()],
            rtcp_mux: true,
            ..stream
        }],
        ..Default::default()
    };
    match client.call(Command::CreateSession(request)).await {
        Ok(Reply::CreateSession(created)) => created,
        other => panic!("create: {other:?}"),
    }
}

fn key(suite: &str, byte: u8, len: usize) -> v1::SrtpKey {
    v1::SrtpKey {
        suite: suite.into(),
        key: (0..len).map(|i| byte ^ (i as u8)).collect(),
    }
}

/// Device A (AES_CM_128_HMAC_SHA1_80, starting 60 packets before the
/// sequence wrap) hands the call to device B (AEAD_AES_128_GCM) while the
/// remote decrypts with AES_CM_128_HMAC_SHA1_32: libsrtp at the remote
/// accepts every packet as one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libsrtp_at_the_remote_accepts_a_handoff_between_srtp_devices() {
    if !gstreamer_present() {
        return;
    }
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let a_key = key("AES_CM_128_HMAC_SHA1_80", 0xa0, 30);
    let b_key = key("AEAD_AES_128_GCM", 0xb0, 28);
    let remote_port = common::free_udp_port();
    let created = create(
        &client,
        "gst-srtp",
        v1::StreamSpec {
            remote_peer: Some(v1::Endpoint {
                rtp: format!("127.0.0.1:{remote_port}"),
                rtcp: String::new(),
            }),
            user_srtp: Some(v1::LegSrtp {
                suite: a_key.suite.clone(),
                peer_key: Some(a_key.clone()),
            }),
            remote_srtp: Some(v1::LegSrtp {
                suite: "AES_CM_128_HMAC_SHA1_32".into(),
                peer_key: Some(key("AES_CM_128_HMAC_SHA1_32", 0x70, 30)),
            }),
            ..Default::default()
        },
    )
    .await;
    let stream = &created.streams[0];
    let to_remote = stream.remote_key.clone().expect("key toward the remote");
    let out = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let out_port = out.local_addr().expect("addr").port();
    let remote = receiver(&to_remote, SSRC_A, remote_port, out_port);
    std::thread::sleep(Duration::from_millis(500));

    let user_a = stream.user.as_ref().expect("user").rtp.clone();
    let a = sender(&a_key, SSRC_A, 65_476, 150, &user_a);
    std::thread::sleep(Duration::from_millis(1500));
    let transferred = match client
        .call(Command::Transfer(v1::TransferRequest {
            session: by_id(&created.session),
            gruu: GRUU_B.into(),
            source_ip: "127.0.0.1".into(),
            streams: vec![v1::TransferStream {
                srtp: Some(v1::LegSrtp {
                    suite: b_key.suite.clone(),
                    peer_key: Some(b_key.clone()),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
    {
        Ok(Reply::Transfer(response)) => response,
        other => panic!("transfer: {other:?}"),
    };
    let user_b = transferred.streams[0]
        .user
        .as_ref()
        .expect("user")
        .rtp
        .clone();
    let b = sender(&b_key, SSRC_B, 10, 100, &user_b);
    let got = collect(&out, Instant::now() + Duration::from_secs(15));
    let _ = stop(a);
    let _ = stop(b);
    let log = stop(remote);

    assert!(
        got.len() >= 150,
        "the remote decrypted {} packets",
        got.len()
    );
    assert!(got.iter().all(|p| p.0 == SSRC_A), "one SSRC");
    for pair in got.windows(2) {
        assert_eq!(
            pair[1].1,
            pair[0].1.wrapping_add(1),
            "consecutive: {pair:?}"
        );
        assert!((pair[1].2.wrapping_sub(pair[0].2) as i32) > 0, "{pair:?}");
    }
    assert!(got.iter().any(|p| p.1 == 0), "the outward sequence wrapped");
    for failure in [
        "Error authentication",
        "replayed",
        "Unable to unprotect",
        "Error while decrypting",
    ] {
        assert!(
            !log.contains(failure),
            "libsrtp at the remote logged {failure:?}:\n{}",
            log.lines()
                .filter(|l| l.contains(failure))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The log is there: the decoder did run at debug level.
    assert!(log.contains("srtpdec"), "no srtpdec log: {log}");
}

/// The bridge the other way: the remote sends plain RTP, the device gets
/// SRTP under the relay's key and libsrtp decrypts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libsrtp_at_the_device_decrypts_the_remotes_plain_rtp() {
    if !gstreamer_present() {
        return;
    }
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let device_port = common::free_udp_port();
    let created = create(
        &client,
        "gst-bridge",
        v1::StreamSpec {
            user_peer: Some(v1::Endpoint {
                rtp: format!("127.0.0.1:{device_port}"),
                rtcp: String::new(),
            }),
            user_srtp: Some(v1::LegSrtp {
                suite: "AEAD_AES_256_GCM".into(),
                peer_key: Some(key("AEAD_AES_256_GCM", 0x44, 44)),
            }),
            ..Default::default()
        },
    )
    .await;
    let stream = &created.streams[0];
    let to_device = stream.user_key.clone().expect("key toward the device");
    let out = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let device = receiver(
        &to_device,
        SSRC_B,
        device_port,
        out.local_addr().expect("a").port(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let remote_relay = stream.remote.as_ref().expect("remote").rtp.clone();
    let (host, port) = remote_relay.rsplit_once(':').expect("host:port");
    let pipeline = format!(
        "audiotestsrc is-live=true num-buffers=100 samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 \
         ! mulawenc ! rtppcmupay ssrc={SSRC_B} seqnum-offset=65500 ! udpsink host={host} port={port}"
    );
    let remote = Process::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_ascii_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0");
    let got = collect(&out, Instant::now() + Duration::from_secs(10));
    let _ = stop(remote);
    let log = stop(device);
    assert_eq!(got.len(), 100, "every packet decrypted at the device");
    assert!(got.iter().any(|p| p.1 == 0), "through the wrap");
    assert!(!log.contains("Error authentication"), "{log}");
}
