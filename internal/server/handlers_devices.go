package server

import (
	"net/http"
	"strconv"

	"github.com/tern-iot/tern/internal/store"
)

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request, c *caller) error {
	q := r.URL.Query()
	sel, err := store.ParseSelector(q.Get("selector"))
	if err != nil {
		return err
	}
	f := store.DeviceFilter{Selector: sel, Status: q.Get("status"), Text: q.Get("q"), After: q.Get("after")}
	switch f.Status {
	case "", "online", "offline", string(store.StatusPending), string(store.StatusAccepted), string(store.StatusActive),
		string(store.StatusRejected), string(store.StatusDecommissioned):
	default:
		return badRequest("status must be online, offline, pending, accepted, active, rejected or decommissioned")
	}
	if l := q.Get("limit"); l != "" {
		if f.Limit, err = strconv.Atoi(l); err != nil || f.Limit < 1 || f.Limit > 1000 {
			return badRequest("limit must be 1..1000")
		}
	}
	ds, err := s.store.Devices(r.Context(), c.Account, f)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, ds)
}

// deviceView is a device with its recent connections.
type deviceView struct {
	store.Device
	Connections []store.Connection `json:"connections"`
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request, c *caller) error {
	d, err := s.store.Device(r.Context(), c.Account, r.PathValue("id"))
	if err != nil {
		return err
	}
	conns, err := s.store.Connections(r.Context(), d.ID, 20)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, deviceView{Device: d, Connections: conns})
}

type labelsReq struct {
	Labels map[string]string `json:"labels"` // an empty value removes the label
}

func (s *Server) patchLabels(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req labelsReq
	if err := decode(r, &req); err != nil {
		return err
	}
	if len(req.Labels) == 0 || len(req.Labels) > 64 {
		return badRequest("labels: 1 to 64 changes")
	}
	for k, v := range req.Labels {
		if err := store.ValidLabel(k, v); err != nil {
			return badRequest("%v", err)
		}
	}
	d, err := s.store.SetLabels(r.Context(), c.Account, r.PathValue("id"), req.Labels, s.now())
	if err != nil {
		return err
	}
	return writeJSON(w, 200, d)
}

// postDecommission revokes the device for good: the store forgets its certificate
// (so the broker refuses it from now on) before the broker drops its connection.
func (s *Server) postDecommission(w http.ResponseWriter, r *http.Request, c *caller) error {
	d, err := s.store.Transition(r.Context(), c.Account, r.PathValue("id"),
		[]store.DeviceStatus{store.StatusActive, store.StatusAccepted, store.StatusPending, store.StatusRejected},
		store.StatusDecommissioned, store.EventDecommissioned, s.now())
	if err != nil {
		return err
	}
	s.broker.Disconnect(d.ID)
	return writeJSON(w, 200, d)
}

func (s *Server) postAccept(w http.ResponseWriter, r *http.Request, c *caller) error {
	d, err := s.store.Transition(r.Context(), c.Account, r.PathValue("id"), []store.DeviceStatus{store.StatusPending},
		store.StatusAccepted, store.EventAccepted, s.now())
	if err != nil {
		return err
	}
	return writeJSON(w, 200, d)
}

func (s *Server) postReject(w http.ResponseWriter, r *http.Request, c *caller) error {
	d, err := s.store.Transition(r.Context(), c.Account, r.PathValue("id"), []store.DeviceStatus{store.StatusPending},
		store.StatusRejected, store.EventRejected, s.now())
	if err != nil {
		return err
	}
	return writeJSON(w, 200, d)
}

func (s *Server) listGroups(w http.ResponseWriter, r *http.Request, c *caller) error {
	gs, err := s.store.Groups(r.Context(), c.Account)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, gs)
}

type groupReq struct {
	Name     string   `json:"name"`
	Selector string   `json:"selector,omitempty"` // dynamic group
	Members  []string `json:"members,omitempty"`  // static group
}

func (s *Server) postGroup(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req groupReq
	if err := decode(r, &req); err != nil {
		return err
	}
	if !nameRE.MatchString(req.Name) {
		return badRequest("group name must be lower-case letters, digits and dashes")
	}
	if req.Selector != "" && len(req.Members) > 0 {
		return badRequest("a group has a selector or members, not both")
	}
	if req.Selector != "" {
		sel, err := store.ParseSelector(req.Selector)
		if err != nil {
			return err
		}
		req.Selector = sel.String()
	}
	g := store.Group{ID: "g-" + randomID(6), AccountID: c.Account, Name: req.Name, Selector: req.Selector,
		Members: req.Members, CreatedAt: s.now()}
	if err := s.store.CreateGroup(r.Context(), g); err != nil {
		return err
	}
	g, err := s.store.Group(r.Context(), c.Account, g.ID)
	if err != nil {
		return err
	}
	return writeJSON(w, 201, g)
}

// groupView is a group with the devices in it now.
type groupView struct {
	store.Group
	Devices []store.Device `json:"devices"`
}

func (s *Server) getGroup(w http.ResponseWriter, r *http.Request, c *caller) error {
	g, err := s.store.Group(r.Context(), c.Account, r.PathValue("id"))
	if err != nil {
		return err
	}
	ds, err := s.store.GroupDevices(r.Context(), c.Account, g.ID)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, groupView{Group: g, Devices: ds})
}

type membersReq struct {
	Members []string `json:"members"`
}

func (s *Server) putMembers(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req membersReq
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := s.store.SetMembers(r.Context(), c.Account, r.PathValue("id"), req.Members); err != nil {
		return err
	}
	g, err := s.store.Group(r.Context(), c.Account, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, 200, g)
}

func (s *Server) deleteGroup(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := s.store.DeleteGroup(r.Context(), c.Account, r.PathValue("id")); err != nil {
		return err
	}
	return noContent(w)
}
