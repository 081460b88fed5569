from rafale.cli import main

main()
