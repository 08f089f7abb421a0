package nats

import (
	"context"
	"errors"
	"io"
	"sort"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/nats-io/nats.go/jetstream"
)

// SnapshotsBucket is the JetStream Object Store bucket where admin nodes
// publish their snapshots, so that a node that starts with an empty data
// directory loads one instead of replaying the whole ledger (see
// projector.Bootstrap). Objects are never deleted: they age out after
// SnapshotsTTL, so no role needs the purge that deleting takes.
const SnapshotsBucket = "SNAPSHOTS"

// SnapshotsStream is the stream behind SnapshotsBucket.
const SnapshotsStream = "OBJ_" + SnapshotsBucket

// SnapshotsTTL is how long a published snapshot is kept.
const SnapshotsTTL = 6 * time.Hour

const snapshotsPrefix = "$O." + SnapshotsBucket + "."

// SnapshotsStreamConfig is the bucket's stream, as nats.go's
// CreateObjectStore makes one (so that ObjectStore binds it).
func SnapshotsStreamConfig(c StreamConfig) jetstream.StreamConfig {
	c = c.withDefaults()
	return jetstream.StreamConfig{
		Name:        SnapshotsStream,
		Description: "keyledger snapshots for nodes that start empty, with their signed manifests",
		Subjects:    []string{snapshotsPrefix + "C.>", snapshotsPrefix + "M.>"},
		MaxAge:      SnapshotsTTL,
		MaxBytes:    -1,
		MaxMsgs:     -1,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Discard:     jetstream.DiscardNew,
		AllowRollup: true,
		AllowDirect: true,
		Duplicates:  2 * time.Minute,
	}
}

// Snapshots is the bucket of published snapshots.
type Snapshots struct {
	os jetstream.ObjectStore
}

// ErrNoSnapshots: the fleet has no snapshots bucket (admin nodes of an
// older version).
var ErrNoSnapshots = keyledger.Errorf(keyledger.NotFound, "the fleet publishes no snapshots")

// OpenSnapshots binds the bucket.
func OpenSnapshots(ctx context.Context, js jetstream.JetStream) (*Snapshots, error) {
	o, err := js.ObjectStore(ctx, SnapshotsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNoSnapshots
	}
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot open the snapshots bucket")
	}
	return &Snapshots{os: o}, nil
}

// Put stores r under name and returns its SHA-256 digest as the bucket
// records it ("SHA-256=<base64url>").
func (s *Snapshots) Put(ctx context.Context, name string, r io.Reader) (string, error) {
	info, err := s.os.Put(ctx, jetstream.ObjectMeta{Name: name}, r)
	if err != nil {
		return "", keyledger.Wrap(keyledger.Unavailable, err, "cannot publish "+name)
	}
	return info.Digest, nil
}

// listTimeout bounds a listing. nats.go lists through a watcher that,
// unlike a single API request, has no default deadline: one whose
// consumer a leader election lost would wait for ever (a node starting
// empty once logged nothing for 85 s there, in CI).
const listTimeout = 10 * time.Second

// Names lists the objects with the prefix, in name order.
func (s *Snapshots) Names(ctx context.Context, prefix string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	infos, err := s.os.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot list the snapshots bucket")
	}
	var names []string
	for _, i := range infos {
		if strings.HasPrefix(i.Name, prefix) && !i.Deleted {
			names = append(names, i.Name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// Get copies the object name into w, and fails unless it has the digest
// want and what was read hashes to it (nats.go checks the bytes against
// the object's recorded digest as it reads).
//
// The download is bounded by the object's size (see downloadTimeout):
// nats.go bounds a Get whose context has no deadline by its 5 s API
// default, which a large snapshot outlasts.
func (s *Snapshots) Get(ctx context.Context, name, want string, w io.Writer) error {
	meta, err := s.os.GetInfo(ctx, name)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read "+name)
	}
	ctx, cancel := context.WithTimeout(ctx, downloadTimeout(meta.Size))
	defer cancel()
	r, err := s.os.Get(ctx, name)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read "+name)
	}
	defer r.Close()
	info, err := r.Info()
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read "+name)
	}
	if want != "" && info.Digest != want {
		return keyledger.Errorf(keyledger.Invalid, "%s is not the object its manifest names (digest %s, want %s)", name, info.Digest, want)
	}
	if _, err := io.Copy(w, r); err != nil {
		return keyledger.Wrap(keyledger.Invalid, err, "cannot read "+name+" whole")
	}
	return nil
}

// downloadTimeout is how long a download of size bytes may take: a
// minute, plus the time at 4 MB/s (847 MB, ten million keys, gets 4.5
// minutes). A slower one is abandoned and the node replays instead.
func downloadTimeout(size uint64) time.Duration {
	return time.Minute + time.Duration(size/(4<<20))*time.Second
}

// GetBytes returns a small object (a manifest).
func (s *Snapshots) GetBytes(ctx context.Context, name string) ([]byte, error) {
	b, err := s.os.GetBytes(ctx, name)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read "+name)
	}
	return b, nil
}
