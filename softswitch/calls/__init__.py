"""The B2BUA, by composition: one caller dialog, one callee dialog and one
bearer session per call.

Read in this order:

* ``state``     the call and fork state machines as transition tables (an
                illegal step raises), refusals mapped to statuses, the
                records (``Call``, ``Leg``, ``Fork``);
* ``table``     ``CallTable``: every index that finds a call (dialog, A's
                INVITE, bearer session, client transaction, bearer request),
                per-user call counts, conference rooms, the call timers;
* ``outputs``   ``Outputs``: the only way out (responses and requests to
                phones through the transaction layer, requests to bearers,
                CDRs, counters);
* ``steps``     ``Steps``: an output plus the table bookkeeping that goes
                with it (2xx until ACKed, re-INVITE, UPDATE, hang-up, CDR);
* ``setup``     ``SetupHandler``: the caller's INVITE up to the 200;
* ``midcall``   ``MidCallHandler``: ACK, CANCEL, BYE, INFO, re-INVITE (hold);
* ``failover``  ``FailoverHandler``: answered calls moved off a dead bearer;
* ``routes``    ``Routes``: the dispatch tables the handlers fill in;
* ``manager``   ``CallManager``: what softswitch.switch drives; dispatches
                every input through ``Routes`` and decides nothing itself;
* ``media``, ``routing``: SDP decisions and where a call goes (with call
                forwarding and DND decided before ringing; on busy and on no
                answer ``setup`` forwards with the same functions);
* ``features``  ``FeatureCodes``: *72<user>/*73/*78/*79 from a phone, handed
                over by ``setup`` after the digest check.

Each handler is built from the one ``CallTable`` and the one ``Outputs`` (plus
what it needs of config, users, locations and bearers), and claims its inputs
in ``register(routes)``: SIP methods, the roles of the requests it sends,
its timers, the states whose bearer wait it ends.  Transfer (REFER)
and presence are meant to be further handlers, each one more
entry in the list ``CallManager.__init__`` registers.  No module here
imports ``manager``, and ``state``/``table``/``outputs`` import no handler.
"""
