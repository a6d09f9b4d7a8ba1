#!/usr/bin/env python3
"""Writes a variant of device B's scenario (scripts/e2e/alice_b.xml) for
one e2e case, so the cases share one scenario file:

  --temp-gruu   B uses the temporary GRUU from the registrar's 200 OK
                (verified through the binding the proxy sent baton);
  --stays       B does not hang up: it answers the remote's hold
                re-INVITE (in B's own dialog: its Call-ID, its tag in To),
                resumes with a re-INVITE of its own (which must reach the
                remote in the remote's dialog), receives the remote's BYE,
                and unregisters;
  --replaced    B does not hang up: another device takes the call from it,
                and the proxy ends B's leg with a BYE in B's dialog;
  --instance XX the device's instance id ends in XX instead of 0b (another
                device of the same user);
  --withdraws   B cancels its handoff INVITE after the proxy's 200 OK won
                the race (CANCEL after the 200, then ACK and BYE, as RFC
                3261 §9.1 makes it): the call must stay with A;
  --write-dialog  B writes the proxy's tag in its dialog (from the 200 OK)
                to the file given as -key dialog_file, for the next
                device's Replaces.
"""

import argparse
import sys

def sdp(version, direction):
    """B's body: PCMA and telephone-event on its RTP port."""
    return f"""      v=0
      o=alice-b 3001 {version} IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio [b_rtp_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a={direction}
"""


def bye_received(to_tag_prefix, name):
    """A BYE in B's dialog (its To tag checked), answered 200 OK."""
    return f"""  <recv request="BYE" timeout="30000">
    <action>
      <ereg regexp="tag={to_tag_prefix}" search_in="hdr" header="To:" check_it="true" assign_to="{name}"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""


def unregister(cseq, authenticated):
    """B's REGISTER removing its contact."""
    auth = "      [authentication username=alice]\n" if authenticated else ""
    return f"""  <send retrans="500">
    <![CDATA[
      REGISTER sip:127.0.0.1:[proxy_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:alice@127.0.0.1>;tag=[pid]unreg[call_number]
      To: <sip:alice@127.0.0.1>
      Call-ID: [call_id]
      CSeq: {cseq} REGISTER
      Contact: <sip:alice@127.0.0.1:[local_port]>;expires=0;+sip.instance="<urn:uuid:00000000-0000-4000-8000-00000000000b>"
{auth}      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""


STAYS = (
    """  <recv request="INVITE" timeout="30000">
    <action>
      <ereg regexp="tag=alice-b-tag-" search_in="hdr" header="To:" check_it="true" assign_to="to_b"/>
      <ereg regexp="a=sendonly" search_in="body" check_it="true" assign_to="hold"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <[$gruu]>
      Content-Type: application/sdp
      Content-Length: [len]

"""
    + sdp(3002, "recvonly")
    + """
    ]]>
  </send>
  <recv request="ACK"/>
  <!-- B resumes: its re-INVITE, in its own dialog, reaches bob in his. -->
  <send retrans="500">
    <![CDATA[
      INVITE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:alice@127.0.0.1>;tag=[b_tag]
      To: <sip:bob@127.0.0.1>;tag=[$proxy_tag]
      Call-ID: [call_id]
      CSeq: 5 INVITE
      Contact: <[$gruu]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

"""
    + sdp(3003, "sendrecv")
    + """
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200">
    <action>
      <ereg regexp="a=sendrecv" search_in="body" check_it="true" assign_to="resumed"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:alice@127.0.0.1>;tag=[b_tag]
      To: <sip:bob@127.0.0.1>;tag=[$proxy_tag]
      Call-ID: [call_id]
      CSeq: 5 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""
    + bye_received("alice-b-tag-", "bye_to_b")
    + "  <!-- And unregisters: its temporary GRUU must be unbound on baton. -->\n"
    + unregister(6, False)
    + '  <recv response="401" auth="true"/>\n'
    + unregister(7, True)
    + """  <recv response="200"/>
  <Reference variables="g,m,x,proxy_tag,to_b,hold,resumed,bye_to_b"/>
</scenario>
"""
)

REPLACED = (
    bye_received("alice-", "bye_to_me")
    + """  <Reference variables="g,m,x,proxy_tag,bye_to_me"/>
</scenario>
"""
)

CANCEL = """  <send>
    <![CDATA[
      CANCEL sip:bob@127.0.0.1:[bob_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-2]
      From: <sip:alice@127.0.0.1>;tag=[b_tag]
      To: <sip:bob@127.0.0.1>
      Call-ID: [call_id]
      CSeq: 4 CANCEL
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"""

WRITE_DIALOG = '      <exec command="echo \'[peer_tag_param]\' > [dialog_file]"/>\n'


def main():
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("--temp-gruu", action="store_true")
    p.add_argument("--stays", action="store_true")
    p.add_argument("--replaced", action="store_true")
    p.add_argument("--instance")
    p.add_argument("--write-dialog", action="store_true")
    p.add_argument("--withdraws", action="store_true")
    args = p.parse_args()
    text = open(args.source).read()
    if args.temp_gruu:
        pub = 'regexp="pub-gruu=&quot;([^&quot;]+)&quot;;temp-gruu=&quot;[^&quot;]+&quot;;'
        assert pub in text
        text = text.replace(pub, 'regexp="temp-gruu=&quot;([^&quot;]+)&quot;;')
    if args.instance:
        assert "00000000000b>" in text and "00000000000b&gt;" in text
        text = text.replace("00000000000b>", "0000000000" + args.instance + ">")
        text = text.replace("00000000000b&gt;", "0000000000" + args.instance + "&gt;")
    if args.write_dialog:
        anchor = '      <exec command="echo [$port] > [b_relay_file]"/>\n'
        assert anchor in text
        text = text.replace(anchor, anchor + WRITE_DIALOG)
    if args.withdraws:
        ack = text.index("  <send>\n    <![CDATA[\n      ACK [next_url]")
        text = text[:ack] + CANCEL + text[ack:]
    if args.stays or args.replaced:
        cut = text.index("  <pause/>")
        text = text[:cut] + (STAYS if args.stays else REPLACED)
    sys.stdout.write(text)


main()
