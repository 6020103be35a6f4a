"""Pure planning: sequence split plans shared by the runtime, attention methods and tests."""
