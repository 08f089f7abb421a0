package analyticstest_test

import (
	"fmt"

	"github.com/keyledger/keyledger/analytics/analyticstest"
)

// A test takes the address from Addr (which fails the test unless `make
// test`, or KEYLEDGER_CLICKHOUSE, provides a ClickHouse) and a database of
// its own from MustTempDatabase; DSN joins them for analytics.Config.
func ExampleDSN() {
	fmt.Println(analyticstest.DSN("127.0.0.1:19000", "kltest_0123456789ab"))
	// Output: clickhouse://127.0.0.1:19000/kltest_0123456789ab
}
