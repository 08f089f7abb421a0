package http

import (
	_ "embed"
	"encoding/json"
	"net/http"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	keyledger "github.com/keyledger/keyledger"
)

// PathOpenAPI is where every listener serves the OpenAPI document, as
// JSON, without authentication: it describes the API and holds no secret.
const PathOpenAPI = "/v1/openapi.json"

//go:embed openapi.yaml
var openAPIYAML []byte

// OpenAPI returns the OpenAPI 3.1 document of the HTTP API (openapi.yaml,
// as written): every endpoint NewRouter serves but the web console, their
// requests, answers, errors and security schemes. The caller may modify
// the slice; it is a copy.
func OpenAPI() []byte { return append([]byte(nil), openAPIYAML...) }

// LoadOpenAPI parses the OpenAPI document (OpenAPI) with kin-openapi and
// resolves its references. Each call returns a document of its own, for
// the caller to keep or change. It does not validate the document:
// call its Validate for that (the package's tests do).
func LoadOpenAPI() (*openapi3.T, error) {
	return openapi3.NewLoader().LoadFromData(openAPIYAML)
}

// openAPIJSON is the document as JSON, loaded once.
var openAPIJSON = sync.OnceValues(func() ([]byte, error) {
	doc, err := LoadOpenAPI()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
})

var allowGetHead = []string{"GET, HEAD"}

// openAPI serves PathOpenAPI: GET and HEAD, to anyone.
func (a *api) openAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header()["Allow"] = allowGetHead
			a.fail(w, r, &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonMethodNotAllowed,
				Message: "method " + keyledger.Quote(r.Method) + " is not allowed here; use GET"})
			return
		}
		b, err := openAPIJSON()
		if err != nil {
			a.fail(w, r, keyledger.Wrap(keyledger.Internal, err, "the OpenAPI document does not load"))
			return
		}
		h := w.Header()
		h["Content-Type"] = jsonContentType
		// The document changes only with the binary: a cache may keep
		// it, but must ask again before using it.
		h["Cache-Control"] = []string{"no-cache"}
		w.WriteHeader(http.StatusOK)
		w.Write(b)
	})
}
