package store

// LargestGroup is the largest group of device messages committed together
// (0 on PostgreSQL).
func (s *Store) LargestGroup() int64 {
	if s.committer == nil {
		return 0
	}
	return s.committer.largest.Load()
}
