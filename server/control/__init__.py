"""What is global to a server of several processes: lifecycle, routing, shared memory,
statistics; one interface, served locally or coordinated across processes."""
