"""The lab server: one process inside the lab namespace answering for every lab host."""
