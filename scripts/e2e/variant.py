#!/usr/bin/env python3
"""Writes a variant of device B's scenario (scripts/e2e/alice_b.xml) for
one e2e case, so the cases share one scenario file:

  --temp-gruu   B uses the temporary GRUU from the registrar's 200 OK
                (verified through the binding the proxy sent baton);
  --stays       B does not hang up: it answers the remote's hold
                re-INVITE (in B's own dialog: its Call-ID, its tag in To)
                and then receives the remote's BYE.
"""

import argparse
import sys

STAYS = """  <recv request="INVITE" timeout="30000">
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

      v=0
      o=alice-b 3001 3002 IN IP4 127.0.0.1
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio [b_rtp_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=recvonly

    ]]>
  </send>
  <recv request="ACK"/>
  <recv request="BYE" timeout="30000">
    <action>
      <ereg regexp="tag=alice-b-tag-" search_in="hdr" header="To:" check_it="true" assign_to="bye_to_b"/>
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
  <Reference variables="g,m,to_b,hold,bye_to_b"/>
</scenario>
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("--temp-gruu", action="store_true")
    p.add_argument("--stays", action="store_true")
    args = p.parse_args()
    text = open(args.source).read()
    if args.temp_gruu:
        assert 'regexp="pub-gruu=' in text
        text = text.replace('regexp="pub-gruu=', 'regexp="temp-gruu=')
    if args.stays:
        cut = text.index("  <pause/>")
        text = text[:cut] + STAYS
    sys.stdout.write(text)


main()
