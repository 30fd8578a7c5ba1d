package store

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"
)

// Group commit of device messages on SQLite.
//
// Every device message the broker hands over (online, offline, a reported
// state, an event, a batch of log lines) is one transaction, and the broker
// acknowledges the message only once it is durable. On SQLite with
// synchronous=FULL each commit waits for an fsync, and one writer commits at a
// time: that wait, not the work, bounded the messages stored per second (the
// fleet simulator's connect storms and campaign phases queued behind it).
//
// So device messages go to one committer goroutine, which runs all the
// messages waiting at that moment in one transaction, each inside its own
// SAVEPOINT (a message that fails is rolled back alone, and its caller gets its
// error), then commits once: one fsync for the group. Each caller returns after
// the commit that made its message durable, as before. While a group commits,
// the next one gathers, so groups grow with the load and stay single under a
// light one. PostgreSQL, which commits concurrently, runs them as before.

// maxGroup bounds the messages committed together.
const maxGroup = 256

// errStoreClosed answers a device message that arrives as the store closes.
var errStoreClosed = errors.New("store is closed")

// deviceOp is one device message's transaction, queued for the committer.
type deviceOp struct {
	ctx   context.Context
	fn    func(ctx context.Context, tx *sql.Tx) (event bool, err error)
	state atomic.Int32 // opQueued, opTaken or opAbandoned
	done  chan error   // buffered: the outcome, once
}

const (
	opQueued int32 = iota
	opTaken
	opAbandoned
)

// committer runs the groups.
type committer struct {
	s    *Store
	ops  chan *deviceOp
	stop chan struct{}
	done chan struct{}
	once sync.Once

	largest atomic.Int64 // the largest group committed, for tests and curiosity
}

func startCommitter(s *Store) *committer {
	c := &committer{s: s, ops: make(chan *deviceOp, 4*maxGroup), stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

// close stops the committer; messages still queued get errStoreClosed. Closing
// again does nothing.
func (c *committer) close() {
	c.once.Do(func() { close(c.stop) })
	<-c.done
	for {
		select {
		case op := <-c.ops:
			op.done <- errStoreClosed
		default:
			return
		}
	}
}

func (c *committer) run() {
	defer close(c.done)
	for {
		var group []*deviceOp
		select {
		case op := <-c.ops:
			group = append(group, op)
		case <-c.stop:
			return
		}
	gather:
		for len(group) < maxGroup {
			select {
			case op := <-c.ops:
				group = append(group, op)
			default:
				break gather
			}
		}
		c.commit(group)
	}
}

// commit runs group in one transaction and hands each message its outcome.
func (c *committer) commit(group []*deviceOp) {
	s := c.s
	// The store's other writers take turns with the groups. The messages are
	// taken only once the lock is held: while a long transaction holds it,
	// their callers may still give up.
	s.writeLock <- struct{}{}
	defer func() { <-s.writeLock }()
	live := group[:0]
	for _, op := range group {
		if op.state.CompareAndSwap(opQueued, opTaken) { // its caller gave up meanwhile otherwise
			live = append(live, op)
		}
	}
	if len(live) == 0 {
		return
	}
	if n := int64(len(live)); n > c.largest.Load() {
		c.largest.Store(n)
	}
	// The group's statements run on contexts that are never cancelled: on
	// SQLite, cancelling a statement inside a transaction can roll the whole
	// transaction back, the other messages' work with it. A caller's context
	// bounds its wait in the queue (deviceTx), not its statements.
	bg := context.Background()
	tx, err := s.db.BeginTx(bg, nil)
	if err != nil {
		reply(live, err)
		return
	}
	var ok []*deviceOp
	event := false
	for i, op := range live {
		if _, err := tx.ExecContext(bg, `SAVEPOINT device_op`); err != nil {
			tx.Rollback()
			reply(ok, err)
			reply(live[i:], err)
			return
		}
		ev, err := op.fn(context.WithoutCancel(op.ctx), tx)
		if err != nil {
			// Undo this message alone. If SQLite rolled the whole
			// transaction back by itself (an I/O error, a full disk), the
			// savepoint is gone: the group fails as one.
			if _, rerr := tx.ExecContext(bg, `ROLLBACK TO device_op`); rerr != nil {
				tx.Rollback()
				reply(ok, rerr)
				op.done <- err
				reply(live[i+1:], rerr)
				return
			}
			op.done <- err
		} else {
			ok = append(ok, op)
			event = event || ev
		}
		if _, err := tx.ExecContext(bg, `RELEASE device_op`); err != nil {
			tx.Rollback()
			reply(ok, err)
			reply(live[i+1:], err)
			return
		}
	}
	err = tx.Commit()
	reply(ok, err) // nil: committed
	if err == nil && event {
		s.notify()
	}
}

// reply hands each op its outcome: err, nil when committed.
func reply(ops []*deviceOp, err error) {
	for _, op := range ops {
		op.done <- err
	}
}

// deviceTx runs fn, a device message's transaction, and returns once it is
// committed (or failed). On SQLite it joins the committer's next group; fn gets
// a context that is not cancelled (its caller's ctx bounds only the wait for its
// turn). Elsewhere it is an ordinary transaction.
func (s *Store) deviceTx(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) (event bool, err error)) error {
	if s.committer == nil {
		return s.tx(ctx, func(tx *sql.Tx) (bool, error) { return fn(ctx, tx) })
	}
	op := &deviceOp{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case s.committer.ops <- op:
	case <-s.committer.done:
		return errStoreClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-op.done:
		return err
	case <-ctx.Done():
		if op.state.CompareAndSwap(opQueued, opAbandoned) {
			return ctx.Err()
		}
		return <-op.done // taken: its outcome comes with its group's commit
	case <-s.committer.done:
		// Closed after it queued (close drains the queue once, and a message
		// may land after that): it never runs unless already taken.
		if op.state.CompareAndSwap(opQueued, opAbandoned) {
			return errStoreClosed
		}
		return <-op.done
	}
}
