"""One public function per stage; each returns a result and never exits the process."""
