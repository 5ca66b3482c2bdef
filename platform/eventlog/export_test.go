package eventlog

// SetMaxBlocked sets how many slot groups w blocks on at once (the others
// are polled).
func SetMaxBlocked(w *Waiter, n int) { w.maxBlocked = n }
