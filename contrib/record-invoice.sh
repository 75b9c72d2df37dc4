#!/bin/sh
# An example gilmsg-consumer --exec handler: record each paid invoice.
#
#   gilmsg-consumer --certname ledger --exec contrib/record-invoice.sh
#
# stdin:  the whole signed message, as one line of JSON: topic, msg (the
#         payload, e.g. {"invoice": 42}), msg_id, timestamp, i, username,
#         signature, certificate, ...
# env:    GILMSG_TOPIC, GILMSG_MSG_ID, GILMSG_SIGNER (the verified sender).
# exit:   0 once the record is safely written: only then does the consumer
#         send the ACK. Any other status (or being killed) means no ACK.
#
# Records go to $INVOICE_LEDGER (default: invoices.jsonl in the consumer's
# working directory), one line per message. The handler is idempotent on
# msg_id: the consumer already drops re-sends of a message it handled, but
# after a restart it no longer remembers them.
set -eu
ledger=${INVOICE_LEDGER:-invoices.jsonl}
message=$(cat)
if [ -f "$ledger" ] && grep -qF "\"msg_id\":\"$GILMSG_MSG_ID\"" "$ledger"; then
    exit 0
fi
printf '%s\n' "$message" >> "$ledger"
