package console_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/node/nodetest"
)

// chromium finds Debian's Chromium, which `make test` installs
// (scripts/chromium.sh); the test never downloads a browser.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("KEYLEDGER_CHROMIUM"), "chromium", "/usr/bin/chromium"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is required for this test: run `make test`, which installs it (scripts/chromium.sh install)")
	return ""
}

// browser starts a headless Chromium of its own (temporary profile, no
// background networking: this machine's network is closed) and returns a
// context to drive it with; it is stopped when the test ends.
func browser(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // the tests run as root here
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelA := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// screenshot saves the page as an artifact (never an assertion) in
// $KEYLEDGER_SCREENSHOTS, or the test's temporary directory.
func screenshot(t *testing.T, bctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("KEYLEDGER_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	// Quality 100 is PNG (below, JPEG).
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// The user's journey of the product documentation, in a real browser:
// sign in, create a key, copy it once, use it, revoke it with the typed
// confirmation, and see the revocation and the usage on the key's page.
func TestBrowser_journey(t *testing.T) {
	addr := analyticstest.Addr(t)
	db := analyticstest.MustTempDatabase(t, addr)
	const token = "console-browser-token-0123456789"
	cfg := nodetest.Config(t.TempDir(), io.Discard)
	cfg.Name, cfg.AdminToken, cfg.ClickHouse = "console", token, analyticstest.DSN(addr, db)
	cfg.DetectInterval = 200 * time.Millisecond // so that the revoked key's use raises revoked_key_used
	n := nodetest.MustOpenConfig(t, cfg)
	api := &nodetest.Caller{T: t, Base: n.URL(), Token: token}
	nodetest.WaitReady(t, api)
	base := n.URL() + "/console/"

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := browser(t, ctx)
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(b, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		return strings.TrimSpace(get(t, b, "read "+sel, chromedp.Text(chromedp.CSS(sel), chromedp.NodeVisible)))
	}

	// Some keys for the list, made through the API.
	for _, body := range []string{
		`{"name":"billing-worker","environment":"live","owner":"org_acme","permissions":["workflows:read","workflows:execute"]}`,
		`{"name":"storage-sync","owner":"org_acme","environment":"test","permissions":["storage:read","storage:write"]}`,
		`{"name":"nightly-report","environment":"live","owner":"org_globex","permissions":["workflows:read"],"expires_at":"` + time.Now().Add(72*time.Hour).UTC().Format(time.RFC3339) + `"}`,
	} {
		if code, _, out := api.Call("POST", "/v1/keys", token, body); code != 201 {
			t.Fatalf("create: %d %s", code, out)
		}
	}

	run("open the console", chromedp.Navigate(base), chromedp.WaitVisible(chromedp.CSS("#credential")))
	url := get(t, b, "location", chromedp.Location())
	if !strings.HasSuffix(url, "/console/signin") {
		t.Fatalf("without a session the console should redirect to sign-in, got %s", url)
	}
	run("sign in", chromedp.SendKeys(chromedp.CSS("#credential"), token), chromedp.Submit(chromedp.CSS("#credential")),
		chromedp.WaitVisible(chromedp.CSS("table.keys")))
	if h := text("h1"); h != "API keys" {
		t.Fatalf("after sign-in: h1 %q", h)
	}

	run("create form", chromedp.Click(chromedp.CSS(`a[href="/console/keys/new"]`)), chromedp.WaitVisible(chromedp.CSS("#name")),
		chromedp.SendKeys(chromedp.CSS("#name"), "checkout-service"), chromedp.SendKeys(chromedp.CSS("#owner"), "org_acme"),
		chromedp.Click(chromedp.CSS(`input[name=permissions][value=all]`)), // untick the default
		chromedp.Click(chromedp.CSS(`input[name=permissions][value="workflows:execute"]`)),
		chromedp.Submit(chromedp.CSS("#name")), chromedp.WaitVisible(chromedp.CSS("#secret")))
	secret := text("#secret")
	if !strings.HasPrefix(secret, "fsk_live_") {
		t.Fatalf("the result page shows %q, not a live key", secret)
	}
	if ab := text("[data-applied-by]"); ab != "1/1 nodes" {
		t.Fatalf("applied_by on the result page: %q", ab)
	}
	screenshot(t, b, "console-created.png")

	authz := func() int {
		code, _, _ := api.Call("GET", "/v1/authz", secret, "", "X-Required-Permission", "workflows:execute", "X-Forwarded-For", "198.51.100.7")
		return code
	}
	for range 3 {
		if code := authz(); code != 200 {
			t.Fatalf("GET /v1/authz with the key from the page: %d, want 200", code)
		}
	}

	// "I have stored it": the secret leaves the DOM and the history.
	disabled := get(t, b, "done is disabled until stored", chromedp.JavascriptAttribute[bool](chromedp.CSS("[data-done]"), "disabled"))
	if !disabled {
		t.Fatal("Done should wait for the 'I have stored it' box")
	}
	run("stored", chromedp.Click(chromedp.CSS("[data-stored-check]")), chromedp.Click(chromedp.CSS("[data-done]")),
		chromedp.WaitVisible(chromedp.CSS("#confirm")))
	if h := text("h1"); h != "checkout-service" {
		t.Fatalf("after Done: h1 %q", h)
	}
	keyPage := get(t, b, "location", chromedp.Location())
	// history.back and page script, not NavigateBack and DOM queries: a
	// page restored from the back-forward cache fires no load event, and
	// chromedp's view of the DOM does not follow it.
	get(t, b, "back", chromedp.Evaluate[bool](`history.back(), true`))
	var html string
	for deadline := time.Now().Add(10 * time.Second); ; {
		html = get(t, b, "page after Back", chromedp.Evaluate[string](
			`document.readyState === "complete" && location.pathname !== "`+strings.TrimPrefix(keyPage, n.URL())+`" ? document.documentElement.outerHTML : ""`))
		if html != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Back did not leave the key page")
		}
		time.Sleep(20 * time.Millisecond) // polling the page, which has no event to wait on
	}
	if strings.Contains(html, secret) {
		t.Fatal("Back after Done shows the secret again")
	}
	run("to the key page", chromedp.Navigate(keyPage), chromedp.WaitVisible(chromedp.CSS("#confirm")))

	// Revoke with the typed confirmation.
	run("revoke form", chromedp.SendKeys(chromedp.CSS("#reason"), "browser test"))
	disabled = get(t, b, "revoke button", chromedp.JavascriptAttribute[bool](chromedp.CSS("[data-confirm-submit]"), "disabled"))
	if !disabled {
		t.Fatal("the revoke button should wait for the typed name")
	}
	run("confirm and revoke", chromedp.SendKeys(chromedp.CSS("#confirm"), "checkout-service"),
		chromedp.Click(chromedp.CSS("[data-confirm-submit]")), chromedp.WaitVisible(chromedp.CSS(".flash")))
	if f := text(".flash"); !strings.Contains(f, "Revoked") || !strings.Contains(f, "Applied by 1/1 nodes") {
		t.Fatalf("flash after revoke: %q", f)
	}
	if code := authz(); code != 401 {
		t.Fatalf("GET /v1/authz after the revoke in the console: %d, want 401", code)
	}
	if h := text("table.history"); !strings.Contains(h, "KeyRevoked") || !strings.Contains(h, "browser test") {
		t.Fatalf("the key's history lacks the KeyRevoked event: %q", h)
	}
	// The usage chart shows the verifications once analytics ingested
	// them (and the refusal after the revoke).
	deadline := time.Now().Add(30 * time.Second)
	for {
		run("reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("table.history")))
		bars := get(t, b, "count bars", chromedp.Evaluate[int](`document.querySelectorAll("svg.usage rect.bar").length`))
		if bars > 0 && strings.Contains(text("figure.chart"), "revoked") && strings.Contains(text("section.card:nth-of-type(2)"), "revoked_key_used") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("30 s after the key was used, the usage chart has no bars or the revoked_key_used alert is missing")
		}
		time.Sleep(200 * time.Millisecond) // between reloads, not in place of a condition
	}
	if s := text("table.small"); !strings.Contains(s, "198.51.100.7") {
		t.Fatalf("top source IPs lack the caller: %q", s)
	}
	screenshot(t, b, "console-key.png")

	run("keys list", chromedp.Navigate(base+"keys"), chromedp.WaitVisible(chromedp.CSS("table.keys")))
	list := text("table.keys")
	for _, want := range []string{"checkout-service", "revoked", "billing-worker", "expiring soon", "test"} {
		if !strings.Contains(list, want) {
			t.Fatalf("keys list lacks %q: %q", want, list)
		}
	}
	screenshot(t, b, "console-keys.png")

	t.Run("keyboard", func(t *testing.T) {
		run("tab", chromedp.KeyEvent("\t"))
		focused := get(t, b, "focused", chromedp.Evaluate[string](`document.activeElement.textContent`))
		if strings.TrimSpace(focused) != "Skip to content" {
			t.Fatalf("first Tab focuses %q, want the skip link", focused)
		}
	})
	t.Run("phone", func(t *testing.T) {
		run("390px", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile, chromedp.EmulateTouch), chromedp.Reload(),
			chromedp.WaitVisible(chromedp.CSS("table.keys")))
		width := get(t, b, "width", chromedp.Evaluate[int](`document.documentElement.scrollWidth`))
		if width > 390 {
			t.Fatalf("at 390 px the page is %d px wide: it scrolls sideways", width)
		}
		screenshot(t, b, "console-keys-phone.png")
		run("activity", chromedp.Navigate(base+"activity"), chromedp.WaitVisible(chromedp.CSS("table.fleet")))
		width = get(t, b, "width", chromedp.Evaluate[int](`document.documentElement.scrollWidth`))
		if width > 390 {
			t.Fatalf("at 390 px the activity page is %d px wide", width)
		}
	})
	run("desktop", chromedp.EmulateViewport(1280, 900), chromedp.Navigate(base+"activity"), chromedp.WaitVisible(chromedp.CSS("table.fleet")))
	if f := text("table.fleet"); !strings.Contains(f, "console") {
		t.Fatalf("the fleet panel lacks this node: %q", f)
	}
	screenshot(t, b, "console-activity.png")
}

// get runs one action that reads a value.
func get[T any](t *testing.T, b context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(b, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}
