//! Each engine's chunks in least-recently-used order: nodes are touched to the front,
//! evicted from the back, and freed for reuse.

use llmstack_core::EndpointId;

use super::index::{NIL, Node, PrefixIndex, Slot, pair_key};

// === impl PrefixIndex ===

impl PrefixIndex {
    /// Gives `id` a slot (the first free one), its LRU list empty.
    pub(super) fn add_slot(&mut self, id: &EndpointId) -> u32 {
        let slot = Slot {
            id: id.clone(),
            budget: 0,
            used: 0,
            head: NIL,
            tail: NIL,
        };
        let i = match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i as u32
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.slot_ids.insert(id.clone(), i);
        i
    }

    /// Makes (hash, slot) the slot's most recently used node, adding it if absent.
    pub(super) fn touch(&mut self, slot: u32, hash: u64) {
        let nodes = &self.nodes;
        let found = self.pairs.find(pair_key(hash, slot), |&n| {
            nodes[n as usize].hash == hash && nodes[n as usize].slot == slot
        });
        let node;
        if let Some(&n) = found {
            node = n;
            self.unlink_lru(node);
        } else {
            let entry = self.head_of(hash);
            node = self.alloc(Node {
                hash,
                slot,
                prev: NIL,
                next: NIL,
                holder_next: NIL,
            });
            match entry {
                // Spliced in after the entry node of the circular list.
                Some(e) => {
                    self.nodes[node as usize].holder_next = self.nodes[e as usize].holder_next;
                    self.nodes[e as usize].holder_next = node;
                }
                None => {
                    self.nodes[node as usize].holder_next = node;
                    let nodes = &self.nodes;
                    self.table
                        .insert_unique(hash, node, |&n| nodes[n as usize].hash);
                }
            }
            let nodes = &self.nodes;
            self.pairs.insert_unique(pair_key(hash, slot), node, |&n| {
                pair_key(nodes[n as usize].hash, nodes[n as usize].slot)
            });
            self.live += 1;
            if let Some(s) = self.slots[slot as usize].as_mut() {
                s.used += 1;
            }
        }
        // The touched holder becomes the entry of its hash's list: walks meet the
        // engines that were sent this prefix most recently first.
        let nodes = &self.nodes;
        if let Some(entry) = self
            .table
            .find_mut(hash, |&n| nodes[n as usize].hash == hash)
        {
            *entry = node;
        }
        self.push_front(slot, node);
    }

    fn alloc(&mut self, node: Node) -> u32 {
        if self.free_nodes != NIL {
            let i = self.free_nodes;
            self.free_nodes = self.nodes[i as usize].next;
            self.nodes[i as usize] = node;
            return i;
        }
        if self.nodes.len() == self.nodes.capacity() {
            // Grow by a quarter, not double: the node table is most of the memory.
            self.nodes.reserve_exact((self.nodes.len() / 4).max(1024));
        }
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    fn push_front(&mut self, slot: u32, node: u32) {
        let Some(s) = self.slots[slot as usize].as_mut() else {
            return;
        };
        let old = s.head;
        s.head = node;
        if s.tail == NIL {
            s.tail = node;
        }
        self.nodes[node as usize].prev = NIL;
        self.nodes[node as usize].next = old;
        if old != NIL {
            self.nodes[old as usize].prev = node;
        }
    }

    fn unlink_lru(&mut self, node: u32) {
        let Node {
            slot, prev, next, ..
        } = self.nodes[node as usize];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        if let Some(s) = self.slots[slot as usize].as_mut() {
            if s.head == node {
                s.head = next;
            }
            if s.tail == node {
                s.tail = prev;
            }
        }
    }

    /// Removes `node` from its LRU list and its hash's holder list, and frees it.
    pub(super) fn remove(&mut self, node: u32) {
        self.unlink_lru(node);
        let Node {
            hash,
            slot,
            holder_next,
            ..
        } = self.nodes[node as usize];
        if let Ok(entry) = self.pairs.find_entry(pair_key(hash, slot), |&n| n == node) {
            entry.remove();
        }
        if holder_next == node {
            // The only holder: the hash leaves the table.
            let nodes = &self.nodes;
            if let Ok(entry) = self
                .table
                .find_entry(hash, |&n| n == node && nodes[n as usize].hash == hash)
            {
                entry.remove();
            }
        } else {
            // Unlink from the circular list (the predecessor is found by walking it),
            // and move the entry off the node if it was there.
            let mut at = holder_next;
            while self.nodes[at as usize].holder_next != node {
                at = self.nodes[at as usize].holder_next;
            }
            self.nodes[at as usize].holder_next = holder_next;
            let nodes = &self.nodes;
            if let Some(entry) = self
                .table
                .find_mut(hash, |&n| n == node && nodes[n as usize].hash == hash)
            {
                *entry = holder_next;
            }
        }
        if let Some(s) = self.slots[slot as usize].as_mut() {
            s.used -= 1;
        }
        self.live -= 1;
        self.nodes[node as usize].next = self.free_nodes;
        self.nodes[node as usize].hash = 0;
        self.free_nodes = node;
    }

    pub(super) fn evict(&mut self, slot: u32) {
        while let Some(s) = self.slots[slot as usize].as_ref()
            && s.used > s.budget
            && s.tail != NIL
        {
            self.remove(s.tail);
        }
    }
}
