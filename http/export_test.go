package http

// HeaderKeys exposes headerKeys to the external tests.
var HeaderKeys = headerKeys
