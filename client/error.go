package client

import (
	"encoding/json"
	"fmt"
	"net/http"

	keyledger "github.com/keyledger/keyledger"
	khttp "github.com/keyledger/keyledger/http"
)

// ErrorFromResponse is the client side of WriteError: it turns an HTTP
// error answer into an *Error with the envelope's code, reason and message.
// An answer without an envelope (a proxy's error page) gets the code whose
// status it has, by the same table, and a message naming the status; its
// body is never shown, as it is not ours to vouch for.
func ErrorFromResponse(status int, body []byte) *keyledger.Error {
	var env khttp.Envelope
	if json.Unmarshal(body, &env) == nil && env.Error.Code != "" {
		return &keyledger.Error{Code: env.Error.Code, Reason: env.Error.Reason, Message: env.Error.Message}
	}
	return &keyledger.Error{Code: khttp.CodeForStatus(status), Message: fmt.Sprintf("HTTP %d %s without an error envelope", status, http.StatusText(status))}
}
