package projector

// PublishSnapshotFiles publishes any snapshot and tree files under a
// manifest of the caller's, for the tests' attacks on bootstrapping.
var PublishSnapshotFiles = publishSnapshot
