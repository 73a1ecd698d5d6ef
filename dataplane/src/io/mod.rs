//! (being written: XDP steering, AF_XDP sockets, workers)
