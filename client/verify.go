package client

import (
	"context"
	"net/http"

	keyledger "github.com/keyledger/keyledger"
	khttp "github.com/keyledger/keyledger/http"
)

// Verify asks the node whether key may be used for permission ("" requires
// a valid key only), with POST /v1/verify. It returns the key's identity
// when it may, and else a *keyledger.Error (see the package comment). The
// error never contains the key.
func (c *Client) Verify(ctx context.Context, key, permission string) (*khttp.VerifyResponse, error) {
	body := struct {
		Key        string `json:"key"`
		Permission string `json:"permission"`
	}{key, permission}
	var vr khttp.VerifyResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/verify", false, body, &vr); err != nil {
		return nil, err
	}
	if !vr.Valid || vr.KeyID == "" {
		return nil, keyledger.Errorf(keyledger.Unavailable, "the verifier answered 200 without a valid verification")
	}
	return &vr, nil
}
