//! (being written) per-worker flow table
pub struct FlowTable {
    capacity: usize,
}
impl FlowTable {
    pub fn new(capacity_flows: usize) -> Self {
        FlowTable { capacity: capacity_flows }
    }
    pub fn len(&self) -> usize {
        0
    }
    pub fn is_empty(&self) -> bool {
        true
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
