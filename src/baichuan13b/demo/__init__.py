"""The offline demo model: its data generator, training recipe and the shipped checkpoint folder."""
