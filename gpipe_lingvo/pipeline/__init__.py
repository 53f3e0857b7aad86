"""The GPipe engine: partition, schedules as data, executor, pipelined layer."""
